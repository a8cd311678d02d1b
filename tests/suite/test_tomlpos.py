from audit.suite.tomlpos import key_lines, line_of

TEXT = """\
# comment
[suite]
name = "x"  # trailing
[models.a]
source = "path:./m"
arr = [
  "a = b",
  { k = 1 },
]
"q.k".z = 1
doc = \"\"\"
fake = 1
\"\"\"
after = 2
[[gates]]
metric = "m"
[[gates]]
metric = "n"
"""


def test_key_lines_tables_keys_and_arrays_of_tables() -> None:
    lines = key_lines(TEXT)
    assert lines[("suite",)] == 2
    assert lines[("suite", "name")] == 3
    assert lines[("models", "a", "source")] == 5
    assert lines[("models", "a", "arr")] == 6
    assert lines[("models", "a", "q.k", "z")] == 10
    assert lines[("models", "a", "after")] == 14
    assert ("models", "a", "fake") not in lines
    assert ("models", "a", "k") not in lines
    assert lines[("gates", 0, "metric")] == 16
    assert lines[("gates", 1, "metric")] == 18


def test_line_of_falls_back_to_nearest_ancestor() -> None:
    lines = key_lines(TEXT)
    assert line_of(lines, ("models", "a", "missing")) == 4
    assert line_of(lines, ("nowhere",)) is None
