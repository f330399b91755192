"""What the adapters share to serve ``roomcast.js``: its bytes, headers and conditional answer.

The browser client ships inside the package (``roomcast/static/roomcast.js``, with
its TypeScript declarations beside it). Each adapter's ``client_script()`` serves it
at a path the application chooses, through `ClientScript.answer`: ``200`` with the
script, or ``304`` when the browser's ``If-None-Match`` names its current ETag. The
script is read once, when the route is made, and revalidated by every page load
(``Cache-Control: no-cache``), so an upgraded package is picked up at once while an
unchanged one costs a 304.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass

__all__ = ["CONTENT_TYPE", "DEFAULT_PATH", "ClientScript", "load", "validate_path"]

#: Where each adapter's ``client_script()`` serves the script unless told otherwise.
DEFAULT_PATH = "/roomcast.js"
#: The media type of an ES module (RFC 9239), as browsers require for module scripts.
CONTENT_TYPE = "text/javascript; charset=utf-8"
#: Revalidate on every use: the path carries no version, the ETag does.
CACHE_CONTROL = "no-cache"
#: The file names inside the package.
SCRIPT = "roomcast.js"
DECLARATIONS = "roomcast.d.ts"


@dataclass(frozen=True, slots=True)
class ClientScript:
    """The script's bytes and the validator that goes with them."""

    body: bytes
    etag: str

    def answer(self, if_none_match: str | None) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body for a GET with this ``If-None-Match`` header.

        ``304`` with no body when the header names the current ETag (weakly, as
        RFC 9110 section 13.1.2 compares for GET) or is ``*``; ``200`` with the
        script otherwise.
        """
        headers = {"ETag": self.etag, "Cache-Control": CACHE_CONTROL}
        if if_none_match is not None and _matches(if_none_match, self.etag):
            return 304, headers, b""
        headers["Content-Type"] = CONTENT_TYPE
        return 200, headers, self.body


def load() -> ClientScript:
    """Read ``roomcast.js`` from the installed package.

    Raises:
        FileNotFoundError: the package was installed without its static files.
    """
    body = importlib.resources.files("roomcast").joinpath("static").joinpath(SCRIPT).read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:32]
    return ClientScript(body=body, etag=f'"{digest}"')


def validate_path(path: str) -> str:
    """Return ``path`` if it is an absolute URL path.

    Raises:
        ValueError: it does not start with ``/``, or has a query or fragment.
    """
    if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in "?#"):
        raise ValueError(
            f"the script's path must be an absolute URL path like /roomcast.js: {path!r}"
        )
    return path


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``etag``, compared weakly."""
    value = if_none_match.strip()
    if value == "*":
        return True
    for candidate in value.split(","):
        tag = candidate.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False
