"""Where each key of a TOML document is written: key path → line number.

``tomllib`` gives values, not positions; error messages need both. This scanner reads table
headers, array-of-tables headers and ``key = value`` lines (dotted and quoted keys included),
skipping the inside of strings and multi-line arrays and inline tables.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _split_key(text: str) -> list[str] | None:
    """Split a (possibly dotted, possibly quoted) key; ``None`` if it is not a key."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            break
        if text[i] in "\"'":
            quote = text[i]
            end = text.find(quote, i + 1)
            if end < 0:
                return None
            parts.append(text[i + 1 : end])
            i = end + 1
        else:
            m = _BARE.match(text, i)
            if not m:
                return None
            parts.append(m.group())
            i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n:
            if text[i] != ".":
                return None
            i += 1
    return parts or None


def _depth_change(line: str, state: dict[str, object]) -> int:
    """Net bracket depth of a value fragment, tracking multi-line strings across lines."""
    depth = 0
    i, n = 0, len(line)
    while i < n:
        ml = state.get("ml")
        if isinstance(ml, str):
            end = line.find(ml, i)
            if end < 0:
                return depth
            state["ml"] = None
            i = end + 3
            continue
        c = line[i]
        if line.startswith('"""', i) or line.startswith("'''", i):
            state["ml"] = line[i : i + 3]
            i += 3
        elif c in "\"'":
            end = i + 1
            while end < n and line[end] != c:
                end += 2 if (c == '"' and line[end] == "\\") else 1
            i = end + 1
        elif c == "#":
            return depth
        elif c in "[{":
            depth += 1
            i += 1
        elif c in "]}":
            depth -= 1
            i += 1
        else:
            i += 1
    return depth


def key_lines(text: str) -> dict[Path, int]:
    """Map each key path (tables, array-of-tables items, keys) to its 1-based line."""
    lines: dict[Path, int] = {}
    table: Path = ()
    counts: dict[Path, int] = {}
    depth = 0
    state: dict[str, object] = {"ml": None}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if depth > 0 or state["ml"]:
            depth += _depth_change(raw, state)
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[["):
            key = _split_key(line[2 : line.find("]]")])
            if key:
                base: Path = tuple(key)
                idx = counts.get(base, 0)
                counts[base] = idx + 1
                table = (*base, idx)
                lines.setdefault(base, lineno)
                lines[table] = lineno
            continue
        if line.startswith("["):
            key = _split_key(line[1 : line.find("]")])
            if key:
                table = tuple(key)
                lines[table] = lineno
            continue
        eq = line.find("=")
        if eq > 0:
            key = _split_key(line[:eq])
            if key:
                path = (*table, *key)
                lines.setdefault(path, lineno)
                depth += _depth_change(line[eq + 1 :], state)
    return lines


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, or of its nearest written ancestor."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
