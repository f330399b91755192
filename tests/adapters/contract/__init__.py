"""One contract suite run against every adapter over real sockets on 127.0.0.1."""
