import json
from pathlib import Path

import pytest

from audit.store.core import Store


def _build(payload: str):
    def build(tmp: Path) -> dict:
        (tmp / "result.json").write_text(payload)
        return {"what": "test"}

    return build


def test_put_get_roundtrip_and_cache_hit(tmp_path: Path) -> None:
    store = Store(tmp_path)
    entry, cached = store.get_or_build("k1", _build('{"a": 1}'))
    assert not cached
    assert json.loads((entry / "result.json").read_text()) == {"a": 1}
    assert store.meta("k1") == {"what": "test"}
    again, cached = store.get_or_build("k1", _build("never used"))
    assert cached and again == entry


def test_failed_build_publishes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)

    def boom(tmp: Path) -> dict:
        (tmp / "half.json").write_text("{")
        raise RuntimeError("crash mid-step")

    with pytest.raises(RuntimeError):
        store.put("k2", boom)
    assert store.get("k2") is None
    assert list((tmp_path / "tmp").iterdir()) == []


def test_corrupted_entry_is_detected_and_rebuilt(tmp_path: Path) -> None:
    store = Store(tmp_path)
    seen: list[str] = []
    store.on_corrupt = lambda key, why: seen.append(why)  # type: ignore[method-assign]
    entry, _ = store.get_or_build("k3", _build('{"a": 1}'))
    (entry / "result.json").write_text('{"a": 2}')  # same size, different bytes
    assert store.get("k3") is None
    assert seen and "checksum" in seen[0]
    entry, cached = store.get_or_build("k3", _build('{"a": 3}'))
    assert not cached
    assert json.loads((entry / "result.json").read_text()) == {"a": 3}


def test_truncated_entry_is_detected(tmp_path: Path) -> None:
    store = Store(tmp_path)
    entry, _ = store.get_or_build("k4", _build('{"a": 1}'))
    (entry / "result.json").write_text("{")
    assert store.get("k4") is None
