"""Writes docs/openapi.json: the OpenAPI 3.1 document of the HTTP API, as the app serves it.

Run ``python -m scripts.openapi`` after changing an endpoint or a body's type;
tests/test_api.py fails while the committed document differs from the served one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from giftrelay.api.app import build
from giftrelay.api.services import LazyStore, Services
from giftrelay.config import Settings

OUT = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def document() -> dict[str, Any]:
    """The document as plain data (the app is built, never served: no Redis, no store)."""
    money: Any = None
    app = build(Services(Settings.load({}), "unused" * 8, money, LazyStore("sqlite:///unused")))
    return cast(dict[str, Any], json.loads(json.dumps(app.openapi_schema.to_schema())))


def main() -> None:
    OUT.write_text(json.dumps(document(), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
