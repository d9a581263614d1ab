"""The web pages the relay serves (demo page, overlays): package files, looked up by name.

Every servable file is listed once at import, so a request can only ever get one
of them: no path from a URL reaches the file system.
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from importlib.resources.abc import Traversable

import msgspec

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


class Page(msgspec.Struct, frozen=True):
    content_type: str
    body: bytes


def _walk(folder: Traversable, prefix: str) -> dict[str, Page]:
    found: dict[str, Page] = {}
    for item in folder.iterdir():
        if item.is_dir():
            found |= _walk(item, f"{prefix}{item.name}/")
        elif not item.name.startswith(("_", ".")) and not item.name.endswith(".py"):
            suffix = "." + item.name.rpartition(".")[2]
            kind = TYPES.get(suffix) or mimetypes.guess_type(item.name)[0]
            if kind:
                found[prefix + item.name] = Page(kind, item.read_bytes())
    return found


_FILES = _walk(resources.files(__package__), "")


def page(path: str) -> Page | None:
    """The page at a URL path: ``/`` is ``index.html``; ``/overlay/alerts`` is its ``.html``."""
    name = path.lstrip("/") or "index.html"
    return _FILES.get(name) or _FILES.get(name + ".html")
