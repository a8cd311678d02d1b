"""Text as every report page shows it: one cleaning rule for templates and inline SVG.

:func:`clean` makes a plain ``str`` HTML can carry: lone surrogates and control characters
become U+FFFD, and Unicode bidirectional controls become visible escapes (``\\u202e``, the
terminal's rule, :func:`audit.terminal.show_bidi`), so a suite named ``term\\u202eLIAF`` cannot
display as "termFAIL". The pages' jinja2 ``finalize`` applies it to every interpolated string
before autoescaping; :func:`escape` is the same for text built into SVG in Python.
"""

from __future__ import annotations

import re

from markupsafe import Markup
from markupsafe import escape as _html_escape

from audit.terminal import show_bidi

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: object) -> str:
    """``text`` as a plain str HTML can carry (see the module docstring)."""
    plain = str(text).encode("utf-8", "replace").decode("utf-8")
    return show_bidi(_CONTROL.sub("\ufffd", plain))


def escape(text: object) -> Markup:
    """``text`` cleaned, then HTML-escaped (markup passes through unchanged, as in markupsafe)."""
    if isinstance(text, Markup):
        return text
    return _html_escape(clean(text))
