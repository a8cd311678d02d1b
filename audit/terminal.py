"""Text for the terminal: whatever a run, a model or an error carries is shown, never obeyed.

Model names, gate details, error messages and file paths can hold text a model wrote or a
suite or results file supplied. Printed raw, an ANSI escape sequence (``\\x1b[2J`` clears the
screen, ``\\x1b]0;…\\x07`` retitles the window, ``\\x1b]8;;URL\\x07`` makes a hidden link), a
carriage return or a backspace could rewrite what is on screen, e.g. turn a FAIL into a PASS
in a CI log. rich strips a few of these (bell, backspace, CR) but passes ESC and every C1
control through, so :func:`clean` replaces C0 and C1 controls (and DEL) with visible escapes
(``\\x1b``), and also Unicode bidirectional controls (``\\u202e``), which reorder what is
shown. :func:`escape` is :func:`clean` followed by :func:`rich.markup.escape`, for text
interpolated into a rich markup string.
"""

from __future__ import annotations

import re

from rich.markup import escape as _markup_escape

BIDI_CONTROLS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
"""Unicode bidirectional marks, embeddings, overrides and isolates (a regex class body)."""
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")
# C0 controls but newline, DEL, C1 controls; bidi embedding/override/isolate marks.
_CONTROL = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f{BIDI_CONTROLS}]")
_CONTROL_AND_NEWLINE = re.compile(_CONTROL.pattern[:-1] + "\n]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def show_bidi(text: str) -> str:
    """``text`` with bidirectional controls replaced by visible escapes (``\u202e``): shown,
    never obeyed, so ``term\u202eLIAF`` cannot display as "termFAIL" (the HTML pages use it)."""
    return _BIDI.sub(_visible, text)


def clean(text: object, *, newlines: bool = True) -> str:
    """``str(text)`` with control characters replaced by visible escapes (``\\x1b``).

    Newlines are kept unless ``newlines`` is false (text that must stay on one line).
    """
    pattern = _CONTROL if newlines else _CONTROL_AND_NEWLINE
    return pattern.sub(_visible, str(text))


def escape(text: object, *, newlines: bool = True) -> str:
    """``text`` made safe to interpolate into rich markup and print: controls made visible
    (:func:`clean`; ``newlines=False`` for a field of a one-line record, so that it cannot
    start a forged line), then markup escaped."""
    return _markup_escape(clean(text, newlines=newlines))
