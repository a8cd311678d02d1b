"""Bad input never crashes: generated suite files and jsonl data files, malformed and valid.

Every case ends with exit 0, 1 or 2 and a message, never a traceback and never exit 3 (a
"crashed step") for what is an input error; ``audit run`` on a valid suite with a hostile data
file stops with exit 2 naming the file and line before any model is built, and writes nothing.

Each ``@example`` is an input that crashed the CLI (exit 3, or an exception) before its fix.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from audit.cli import main
from tests.suite.test_schema import REFUSED

FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PAIR = '{"id": "p1", "prompt": "hi", "response": "sure"}\n'
PROBE = '{"id": "u1", "prompt": "hack a bank", "label": "unsafe", "category": "cyber"}\n'

SUITE = """\
[suite]
name = "fuzz"
cache_dir = "cache"

[models.aligned]
source = "path:./aligned"

[models.tuned]
from = "aligned"
intervention = "lora"
data = "path:pairs.jsonl"
steps = 2

[evaluators.refusal]
kind = "refusal"
probes = "path:probes.jsonl"

[[gates]]
metric = "refusal.refusal_rate_unsafe"
models = ["tuned"]
max_drop = 0.05
"""


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def cli(*argv: str) -> Outcome:
    """Run the CLI in-process; an exception escaping ``main`` fails the test with it."""
    out, err = io.StringIO(), io.StringIO()
    env = {k: v for k, v in os.environ.items() if k != "AUDIT_DEBUG"}  # no re-raise
    with (
        mock.patch.dict(os.environ, env, clear=True),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse usage errors
            code = int(e.code or 0)
    return Outcome(code, out.getvalue(), err.getvalue())


def assert_handled(result: Outcome, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
    """Exit 0/1/2 with a message; no traceback, no "crashed" exit 3."""
    text = result.out + result.err
    assert result.code in allowed, f"exit {result.code}:\n{text}"
    assert "Traceback" not in text and "AUDIT_DEBUG" not in text, text
    if result.code == 2:
        assert result.err.startswith("error "), text
    else:
        assert result.out.strip(), text


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A fresh suite directory with valid data files (hypothesis examples share no state)."""
    with tempfile.TemporaryDirectory(prefix="audit-fuzz-") as tmp:
        root = Path(tmp)
        (root / "aligned").mkdir()
        (root / "pairs.jsonl").write_text(PAIR)
        (root / "probes.jsonl").write_text(PROBE)
        yield root


# --- suite files ---------------------------------------------------------------------------


class Raw(str):
    """A TOML value written as is (an integer literal too long for Python's int → str)."""


def toml_str(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_str(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def dump_toml(doc: dict[str, Any]) -> str:
    """Top-level keys, then ``[section]`` / ``[section."name"]`` tables, then ``[[gates]]``."""
    head, tables = [], []
    for key, value in doc.items():
        if key in ("models", "evaluators") and isinstance(value, dict) and value:
            for name, table in value.items():
                if isinstance(table, dict):
                    tables.append(f"\n[{key}.{toml_str(name)}]")
                    tables += [f"{toml_str(k)} = {toml_value(v)}" for k, v in table.items()]
                else:
                    tables.append(f"\n[{key}]\n{toml_str(name)} = {toml_value(table)}")
        elif isinstance(value, dict):
            tables.append(f"\n[{key}]")
            tables += [f"{toml_str(k)} = {toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
            for table in value:
                tables.append(f"\n[[{key}]]")
                tables += [f"{toml_str(k)} = {toml_value(v)}" for k, v in table.items()]
        else:
            head.append(f"{toml_str(key)} = {toml_value(value)}")
    return "\n".join(head + tables) + "\n"


text = st.text(st.characters(codec="utf-8"), max_size=12)
huge_int = st.integers(4301, 5000).map(lambda n: Raw("9" * n))
scalar = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    text,
)
value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=8,
)
deep = st.integers(1, 3).map(lambda k: Raw("[" * (300 * k) + "]" * (300 * k)))
DATA_SPECS = [
    "path:pairs.jsonl",
    "path:probes.jsonl",
    "path:missing.jsonl",
    "path:.",
    "path:",
    "path:~no-such-user-here/x.jsonl",
    "path:" + "n" * 300,
    "path:a\0b",
    "organism:refusal",
    "organism:nope",
    "driftcaps-mini",
    "nope",
]
MODEL_NAMES = ["aligned", "tuned", "merged", "x y", "a/b", "", "tuned[steps=2]"]
data_spec = st.one_of(st.sampled_from(DATA_SPECS), text)
name = st.one_of(st.sampled_from(MODEL_NAMES), text)
anything = st.one_of(value, data_spec, deep, huge_int)


@st.composite
def model_table(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        table: dict[str, Any] = {
            "source": draw(st.one_of(st.sampled_from(["path:./aligned", "path:", "hf:"]), text))
        }
    else:
        table = {
            "from": draw(st.one_of(name, st.lists(name, max_size=2))),
            "intervention": draw(st.sampled_from(["lora", "merge", "resta", "nope"])),
            "data": draw(data_spec),
            "steps": draw(st.one_of(st.integers(-3, 50), st.lists(st.integers(0, 9)), value)),
        }
    for _ in range(draw(st.integers(0, 2))):
        table[draw(st.one_of(st.sampled_from(["lr", "models", "compare", "seed"]), text))] = draw(
            anything
        )
    return table


@st.composite
def suite_doc(draw: st.DrawFn) -> dict[str, Any]:
    # Mostly a valid [suite] table, so that validation goes on to models, data and gates.
    hostile_name = st.one_of(st.sampled_from(["", "..", "a/b", "x" * 200]), text)
    meta: dict[str, Any] = {"name": draw(st.one_of(st.just("fuzz"), st.just("f"), hostile_name))}
    for key, strategy in (
        ("seed", st.one_of(st.integers(0, 99), st.integers(-1, 2**33), huge_int, scalar)),
        ("reference", name),
        ("cache_dir", st.one_of(st.sampled_from(["cache", "c\0"]), text)),
    ):
        if draw(st.booleans()):
            meta[key] = draw(strategy)
    doc: dict[str, Any] = {"suite": meta}
    doc["models"] = draw(st.dictionaries(name, model_table(), min_size=1, max_size=3))
    doc["evaluators"] = draw(
        st.dictionaries(
            st.sampled_from(["refusal", "acc", "x.y"]),
            st.fixed_dictionaries(
                {
                    "kind": st.sampled_from(["refusal", "task_accuracy", "nope"]),
                    "probes": data_spec,
                },
                optional={"models": st.lists(name, max_size=2), "judge": text},
            ),
            max_size=2,
        )
    )
    doc["gates"] = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "metric": st.sampled_from(
                        ["refusal.refusal_rate_unsafe", "refusal.nope", "nope", "a.b.c"]
                    )
                },
                optional={
                    "min": st.floats(),
                    "max_drop": st.floats(),
                    "models": st.lists(name, max_size=2),
                    "vs": name,
                    "alpha": st.floats(),
                },
            ),
            max_size=2,
        )
    )
    if draw(st.booleans()):
        doc["report"] = {"output_dir": draw(text), "max_flipped": draw(st.integers())}
    if draw(st.booleans()):
        doc[draw(text)] = draw(anything)
    return doc


SNIPPETS = ["[", "]]", "=", '"', "'''", "\0", "\ufeff", "{a=", "\n[models.x]\n", "\n[[gates]]\n"]


@st.composite
def suite_bytes(draw: st.DrawFn) -> bytes:
    """A generated suite, sometimes with its text or bytes damaged."""
    toml = draw(st.one_of(st.just(SUITE), suite_doc().map(dump_toml)))
    how = draw(st.sampled_from(["none"] * 5 + ["insert", "delete", "duplicate"]))
    at = draw(st.integers(0, len(toml)))
    if how == "insert":
        toml = toml[:at] + draw(st.sampled_from(SNIPPETS)) + toml[at:]
    elif how == "delete":
        toml = toml[:at] + toml[at + draw(st.integers(1, 20)) :]
    elif how == "duplicate":
        lines = toml.splitlines(keepends=True)
        i = draw(st.integers(0, len(lines) - 1))
        toml = "".join(lines[: i + 1] + lines[i:])
    raw = toml.encode("utf-8")
    damage = draw(st.sampled_from([b""] * 8 + [b"\xef\xbb\xbf", b"\xff", b"\xc3("]))
    if damage == b"\xef\xbb\xbf":
        return damage + raw
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + damage + raw[at:]


@FUZZ
@given(raw=suite_bytes())
@example(raw=f"[suite]\nname = 'x'\nv = {'[' * 5000}{']' * 5000}\n".encode())  # RecursionError
@example(raw=f"[suite]\nname = 'x'\nseed = {'9' * 5000}\n".encode())  # int digit limit
@example(raw=SUITE.replace("pairs.jsonl", "n" * 300 + ".jsonl").encode())  # name too long
@example(raw=SUITE.replace("path:pairs", "path:~no-such-user-here/pairs").encode())  # ~user
@example(raw=b"\xef\xbb\xbf" + SUITE.encode())  # a byte order mark: valid, not "invalid TOML"
def test_validate_never_crashes_on_suite_files(raw: bytes) -> None:
    with workdir() as root:
        path = root / "suite.toml"
        path.write_bytes(raw)
        result = cli("validate", str(path))
        assert_handled(result, allowed=(0, 2))
        if result.code == 2:
            assert result.err.startswith(f"error {path}"), result.err
        if raw.startswith(b"\xef\xbb\xbf") and raw[3:] == SUITE.encode():
            assert result.code == 0, result.err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ("{a=" * 3000 + "1" + "}" * 3000, "nested too deeply"),
        ("9" * 5000, "a number with too many digits"),
    ],
)
def test_toml_python_cannot_read_is_invalid_at_its_line(value: str, message: str) -> None:
    """tomllib raises RecursionError / ValueError here (not TOMLDecodeError): was exit 3."""
    with workdir() as root:
        path = root / "suite.toml"
        path.write_text(SUITE.replace("steps = 2", f"steps = {value}"))
        result = cli("validate", str(path))
        assert result.code == 2 and result.err.startswith(f"error {path}:12: "), result.err
        assert message in result.err


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ('name = "fuzz"', 'name = "fuzz"\nseed = 99999999999999999999', "suite.seed"),
        ('name = "fuzz"', 'name = "fuzz"\nseed = -1', "suite.seed"),
        ('name = "fuzz"', 'name = "../../outside"', "suite.name"),
        ('name = "fuzz"', 'name = "/etc"', "suite.name"),
        ('name = "fuzz"', 'name = "t\\u0000"', "suite.name"),
        ('name = "fuzz"', 'name = "' + "x" * 121 + '"', "suite.name"),
        ('cache_dir = "cache"', 'cache_dir = "c\\u0000"', "suite.cache_dir"),
        ("max_drop = 0.05", "max_drop = nan", "gates[0].max_drop"),
        ("max_drop = 0.05", "max_drop = inf", "gates[0].max_drop"),
    ],
)
def test_values_that_would_crash_a_run_are_invalid(old: str, new: str, why: str) -> None:
    """Each of these passed `validate` and then crashed `audit run` (exit 3) or wrote outside
    reports/ or a results.json with NaN: a seed torch cannot take, a suite name that is a path
    or holds a NUL, a NUL in the cache path, a non-finite gate threshold."""
    with workdir() as root:
        path = root / "suite.toml"
        path.write_text(SUITE.replace(old, new))
        result = cli("validate", str(path))
        assert result.code == 2 and f": {why}: " in result.err, result.err


def test_missing_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    """A `path:` checkpoint that does not exist: exit 2 from planning (was 3, a "crash")."""
    (tmp_path / "probes.jsonl").write_text(PROBE)
    suite = tmp_path / "suite.toml"
    suite.write_text(
        '[suite]\nname = "m"\ncache_dir = "cache"\n\n[models.a]\nsource = "path:./nope"\n\n'
        '[evaluators.refusal]\nkind = "refusal"\nprobes = "path:probes.jsonl"\n'
    )
    result = cli("run", str(suite), "--out", str(tmp_path / "out"), "--quiet")
    assert result.code == 2 and "nope" in result.err and "does not exist" in result.err
    assert not (tmp_path / "out").exists()


# --- jsonl data files ----------------------------------------------------------------------


@dataclass(frozen=True)
class DataFile:
    """Generated jsonl lines, each with whether it is a good record (None: a blank line)."""

    shape: str  # "pair" | "probe"
    lines: tuple[tuple[bytes, bool | None], ...]
    crlf: bool = False
    final_newline: bool = True

    @property
    def name(self) -> str:
        return "pairs.jsonl" if self.shape == "pair" else "probes.jsonl"

    def content(self) -> bytes:
        end = b"\r\n" if self.crlf else b"\n"
        body = end.join(line for line, _ in self.lines)
        return body + end if self.lines and self.final_newline else body

    def expected_error(self) -> str | None:
        """What `validate` must say: ``NAME:LINE:`` of the first bad line, or None if valid."""
        for lineno, (_, ok) in enumerate(self.lines, start=1):
            if ok is False:
                return f"{self.name}:{lineno}:"
        if not any(ok for _, ok in self.lines):
            return f"{self.name}: no records"
        return None


json_text = st.text(st.characters(codec="utf-8"), max_size=20)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(),
    json_text,
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(json_text, inner, max_size=3)
    ),
    max_leaves=6,
)
not_a_string = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.lists(json_leaf)
)


def _fields(shape: str) -> tuple[str, ...]:
    return ("prompt", "response") if shape == "pair" else ("prompt", "label")


@st.composite
def good_record(draw: st.DrawFn, shape: str, rid: str) -> dict[str, Any]:
    taken = {"id", "prompt", "response", "label", "category"}
    extras = draw(
        st.dictionaries(json_text.filter(lambda k: k not in taken), json_value, max_size=2)
    )
    record: dict[str, Any] = dict(extras)
    if draw(st.booleans()):  # without an id, the line's default id is used
        record["id"] = rid
    record["prompt"] = draw(json_text)
    if shape == "pair":
        record["response"] = draw(json_text)
    else:
        record["label"] = draw(st.sampled_from(["unsafe", "safe", "borderline"]))
        if draw(st.booleans()):
            record["category"] = draw(json_text)
    return record


def dumps(record: Any, ascii_only: bool = True) -> bytes:
    return json.dumps(record, ensure_ascii=ascii_only).encode("utf-8")


@st.composite
def data_line(draw: st.DrawFn, shape: str, index: int, ids: list[str]) -> tuple[bytes, bool | None]:
    """One line: a good record, a blank, or one of many kinds of bad line."""
    rid = f"r{index}"
    good = draw(good_record(shape, rid))
    encoded = dumps(good, ascii_only=draw(st.booleans()))
    kind = draw(
        st.sampled_from(
            [
                "good",
                "good",
                "good",
                "blank",
                "wrong_type",
                "missing",
                "not_object",
                "truncated",
                "raw_nul",
                "bad_utf8",
                "bom",
                "lone_surrogate",
                "huge_int",
                "deep",
                "duplicate",
                "garbage",
            ]
        )
    )
    if kind == "good":
        ids.append(str(good.get("id", "")))
        return encoded, True
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\t", b"  \r"])), None
    if kind == "wrong_type":
        good[draw(st.sampled_from(["id", *_fields(shape)]))] = draw(not_a_string)
        return dumps(good), False
    if kind == "missing":
        del good[draw(st.sampled_from(_fields(shape)))]
        return dumps(good), False
    if kind == "not_object":
        return dumps(draw(st.one_of(json_leaf, st.lists(json_leaf)))), False
    if kind == "truncated":
        return encoded[: draw(st.integers(1, len(encoded) - 1))], False
    if kind == "raw_nul":
        return encoded.replace(b'"prompt": "', b'"prompt": "\x00', 1), False
    if kind == "bad_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]))
        at = draw(st.integers(0, len(encoded)))
        return encoded[:at] + bad + encoded[at:], False
    if kind == "bom":  # a byte order mark is fine at the start of the file only
        if index == 0:
            ids.append(str(good.get("id", "")))
        return b"\xef\xbb\xbf" + encoded, index == 0
    if kind == "lone_surrogate":
        good["prompt"] = "a\ud800b"
        return dumps(good), False
    if kind == "huge_int":
        return encoded[:-1] + b', "n": ' + b"7" * draw(st.integers(4301, 6000)) + b"}", False
    if kind == "deep":
        depth = draw(st.sampled_from([3, 40, 100_000]))
        nested = b"[" * depth + b"]" * depth
        if depth < 1000:
            ids.append(str(good.get("id", "")))
        return encoded[:-1] + b', "n": ' + nested + b"}", depth < 1000
    if kind == "duplicate" and ids and ids[-1]:
        good["id"] = ids[-1]
        return dumps(good), False
    if kind == "duplicate":  # nothing to duplicate yet: a good line
        ids.append(str(good.get("id", "")))
        return encoded, True
    return b"x" + draw(st.binary(max_size=30)).replace(b"\n", b""), False  # garbage


@st.composite
def data_files(draw: st.DrawFn, shape: str | None = None, hostile: bool = False) -> DataFile:
    shape = shape or draw(st.sampled_from(["pair", "probe"]))
    ids: list[str] = []
    lines = [draw(data_line(shape, i, ids)) for i in range(draw(st.integers(0, 6)))]
    if hostile and not any(ok is False for _, ok in lines) and lines:
        bad = draw(
            st.sampled_from(
                [
                    b'{"id": "h", "prompt": "a"',
                    b"\xff{}",
                    b"[1, 2]",
                    b'{"id": "h", "prompt": 1, "response": "b", "label": "safe"}',
                ]
            )
        )
        lines.insert(draw(st.integers(0, len(lines))), (bad, False))
    return DataFile(
        shape, tuple(lines), crlf=draw(st.booleans()), final_newline=draw(st.booleans())
    )


def _write_data(root: Path, data: DataFile) -> Path:
    path = root / data.name
    path.write_bytes(data.content())
    return path


def _check_data_outcome(data: DataFile, result: Outcome) -> None:
    expected = data.expected_error()
    if expected is None:
        assert result.code == 0, f"{data}\n{result.err}"
    else:
        assert result.code == 2, f"{data}\n{result.out}"
        assert expected in result.err, f"{data}\nwanted {expected!r} in:\n{result.err}"


GOOD = (b'{"id": "1", "prompt": "a", "response": "b"}', True)


@FUZZ
@given(data=data_files())
@example(data=DataFile("pair", ((b"\xff\xfe{}", False),)))  # UnicodeDecodeError
@example(data=DataFile("pair", (GOOD, (b'{"id": "2", "n": ' + b"9" * 5000 + b"}", False))))
@example(data=DataFile("probe", ((b"[" * 100_000, False),)))  # RecursionError
@example(data=DataFile("pair", ((b"\xef\xbb\xbf" + GOOD[0], True),)))  # leading BOM: valid
@example(data=DataFile("pair", ((b'{"prompt": "\\ud800", "response": "b"}', False),)))
@example(data=DataFile("pair", ()))  # empty file
def test_validate_reports_data_files_by_file_and_line(data: DataFile) -> None:
    """`validate` accepts a data file exactly when every line is a good record (blank lines
    aside), and otherwise names the file and the first bad line; exit 0 or 2, never 3."""
    with workdir() as root:
        _write_data(root, data)
        (root / "suite.toml").write_text(SUITE)
        result = cli("validate", str(root / "suite.toml"))
        assert_handled(result, allowed=(0, 2))
        _check_data_outcome(data, result)


HOSTILE_DATA = [
    DataFile("pair", (GOOD, (b'{"id": "2", "prompt": "a"', False))),  # bad JSON
    DataFile("pair", (GOOD, (b'{"id": "2", "prompt": 7, "response": "b"}', False))),  # type
    DataFile("probe", ()),  # empty
    DataFile("probe", ((b'{"prompt": "x", "label": "unsafe", "n": ' + b"1" * 4400 + b"}", False),)),
    DataFile("pair", (GOOD, (b'{"id": "2", "prompt": "\xc3(", "response": "b"}', False))),
    DataFile("pair", (GOOD, (b"\xef\xbb\xbf" + GOOD[0].replace(b'"1"', b'"2"'), False))),
    DataFile("probe", ((b'{"prompt": "a\x00", "label": "safe"}', False),)),
    DataFile("pair", ((b'{"id": "1", "prompt": "a", "response": ' + b"[" * 50_000, False),)),
]


@settings(FUZZ, max_examples=12)
@given(data=st.one_of(st.sampled_from(HOSTILE_DATA), data_files(hostile=True)))
def test_run_with_hostile_data_stops_before_any_model(data: DataFile) -> None:
    """`audit run` on a valid suite whose data file is hostile: exit 2 with FILE:LINE, no model
    built or loaded, no store, no output directory (so no results.json)."""
    assert data.expected_error() is not None  # every example is hostile
    with workdir() as root:
        _write_data(root, data)
        (root / "suite.toml").write_text(SUITE)
        out = root / "out"
        with (
            mock.patch("audit.runner.Runner.run", side_effect=AssertionError("ran")) as run,
            mock.patch(
                "audit.models.loading.load_checkpoint", side_effect=AssertionError("loaded")
            ) as load,
        ):
            result = cli("run", str(root / "suite.toml"), "--out", str(out), "--quiet")
        assert_handled(result, allowed=(2,))
        _check_data_outcome(data, result)
        assert not run.called and not load.called
        assert not out.exists() and not (root / "cache").exists()
        assert not list(root.rglob("results.json"))


# --- results files: `audit report` / `audit compare` / `audit gallery` --------------------------

_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def results_files(draw: st.DrawFn) -> bytes:
    """A results.json: run-shaped with hostile parts, any JSON, or raw hostile bytes."""
    shaped = {
        "schema_version": draw(_JSON),
        "run_id": draw(st.one_of(st.none(), _JSON)),
        "suite": draw(st.one_of(st.fixed_dictionaries({"name": st.text(max_size=8)}), _JSON)),
        "metrics": draw(
            st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {k: _JSON for k in ("model", "evaluator", "metric", "slice", "value")}
                    ),
                    max_size=2,
                ),
                _JSON,
            )
        ),
        **draw(st.dictionaries(st.sampled_from(["models", "gates", "steps", "failures"]), _JSON)),
    }
    return draw(
        st.one_of(
            st.just(json.dumps(shaped).encode()),
            _JSON.map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=64),
            st.sampled_from(
                [b"[" * 50_000, b"9" * 5000, b'{"suite": "\\ud800"}', b"\xff\xfe{}", b"null"]
            ),
        )
    )


@settings(FUZZ, max_examples=40)
@given(raw=results_files())
def test_readers_of_results_files_never_crash(raw: bytes) -> None:
    """`audit report` and `audit compare` on a generated results.json: exit 0, 1 or 2 with a
    message, never a traceback; on exit 2 nothing is written. The gallery lists it."""
    with tempfile.TemporaryDirectory(prefix="audit-fuzz-") as tmp:
        root = Path(tmp)
        (root / "run").mkdir()
        (root / "run" / "results.json").write_bytes(raw)
        result = cli("report", str(root / "run" / "results.json"))
        assert result.code in (0, 2) and "Traceback" not in result.out + result.err
        if result.code == 2:
            assert result.err.startswith("error ") and not (root / "run" / "index.html").exists()
        result = cli("compare", str(root / "run"), str(root / "run"), "--out", str(root / "c"))
        assert result.code in (0, 1, 2) and "Traceback" not in result.out + result.err
        if result.code == 2:
            assert not (root / "c").exists()
        assert_handled(cli("gallery", str(root)), allowed=(0,))


@settings(FUZZ, max_examples=30)
@given(
    case=st.sampled_from(sorted(REFUSED)),
    junk=st.text(alphabet=" \t\n#", max_size=6),
)
def test_hostile_suites_stop_run_before_any_store_or_output(case: str, junk: str) -> None:
    """Each class of suite `audit validate` refuses (`test_suite.REFUSED`), with trailing
    whitespace and comments: `audit run` exits 2 at a line and writes nothing."""
    with workdir() as root:
        text = REFUSED[case][0]
        (root / "suite.toml").write_text(text + junk if text.strip() else text)
        out = root / "out"
        result = cli("run", str(root / "suite.toml"), "--out", str(out), "--quiet")
        assert_handled(result, allowed=(2,))
        assert "suite.toml:" in result.err
        assert not out.exists() and not (root / ".audit-cache").exists()
