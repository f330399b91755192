"""Tests of the docs, the README and the examples, run as a user would."""
