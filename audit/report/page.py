"""Writing a page: the templates, the page's one script and its CSP hash, the atomic write."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from audit.files import atomic_write_text
from audit.report.format import clean_text

HERE = Path(__file__).parent
SCRIPT = (HERE / "sort.js").read_text(encoding="utf-8").strip()
"""The page's only script (click a column heading to sort); the CSP allows it by its hash."""
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()


# --- rendering --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def jinja_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_finalize,
    )


def _finalize(value: Any) -> Any:
    """Every template output passes here: plain strings are cleaned, then autoescaped."""
    return clean_text(value) if isinstance(value, str) and not isinstance(value, Markup) else value


def write_page(target: Path, page: str) -> Path:
    """Write ``page`` to ``target`` atomically (readable by all, like any published page):
    readers see the old page or the new one, never half."""
    return atomic_write_text(target, page, errors="replace", mode=0o644)
