"""`[suite] seeds`: every intervention model replicated per seed, inputs rewired to the same
seed's replicas, names as written selecting every replica, and validation errors."""

from __future__ import annotations

from pathlib import Path

from suite_files import issues, load

from audit.plan import comparison_pairs
from audit.suite.pairs import gate_pairs

SUITE = """\
[suite]
name = "seeds"
seeds = [0, 3]

[models.aligned]
source = "organism:aligned"

[models.lora]
from = "aligned"
intervention = "lora"
data = "organism:helpful"

[models.agl]
from = "aligned"
intervention = "alignguard"
data = "organism:helpful"
safety_data = "organism:refusals"
compare = ["lora"]

[models.merged]
intervention = "merge"
method = "dam"
base = "aligned"
models = ["lora", "agl"]
task_data = ["organism:helpful", "organism:helpful"]
controls = true

[evaluators.refusal]
kind = "refusal"
models = ["aligned", "lora", "agl*", "merged"]
probes = "organism:driftcaps"

[[gates]]
metric = "refusal.refusal_rate_unsafe"
models = ["agl"]
vs = "lora"
max_drop = 0.0
"""


def test_every_intervention_model_is_replicated_per_seed(tmp_path: Path) -> None:
    suite = load(tmp_path, SUITE)
    assert list(suite.file.models) == [
        "aligned",
        "lora.seed0",
        "lora.seed3",
        "agl.seed0",
        "agl.seed3",
        "merged.seed0",
        "merged.seed3",
        "merged.control_norm.seed0",
        "merged.control_norm.seed3",
        "merged.control_random.seed0",
        "merged.control_random.seed3",
    ]
    assert suite.seed == 0 and suite.model_seed("agl.seed3") == 3
    assert suite.model_seed("aligned") == 0
    assert suite.base_of("agl.seed3") == "agl" and suite.base_of("aligned") == "aligned"
    # inputs are the same seed's replicas; loaded models are shared
    merged = suite.file.models["merged.seed3"]
    assert merged.models == ["lora.seed3", "agl.seed3"] and merged.params["base"] == "aligned"
    control = suite.file.models["merged.control_norm.seed3"]
    assert control.params["of"] == "merged.seed3"
    assert suite.controls["merged.control_norm.seed3"] == "merged.seed3"
    assert suite.compare_with("agl.seed3") == ["lora.seed3"]


def test_names_as_written_select_every_replica(tmp_path: Path) -> None:
    suite = load(tmp_path, SUITE)
    assert suite.evaluated_models("refusal") == [
        "aligned",
        "lora.seed0",
        "lora.seed3",
        "agl.seed0",
        "agl.seed3",
        "merged.seed0",
        "merged.seed3",
        "merged.control_norm.seed0",  # controls go wherever their defence goes
        "merged.control_norm.seed3",
        "merged.control_random.seed0",
        "merged.control_random.seed3",
    ]
    # a gate's `vs` is the same seed's replica
    assert gate_pairs(suite, suite.file.gates[0]) == [
        ("agl.seed0", "lora.seed0"),
        ("agl.seed3", "lora.seed3"),
    ]
    pairs = {(p.model, p.baseline) for p in comparison_pairs(suite, ())}
    assert ("agl.seed3", "lora.seed3") in pairs and ("agl.seed3", "lora.seed0") not in pairs


def test_seed_and_seeds_conflict(tmp_path: Path) -> None:
    found = issues(tmp_path, SUITE.replace("seeds = [0, 3]", "seed = 1\nseeds = [0, 3]"))
    assert any("give `seed` or `seeds`" in f for f in found)
    found = issues(tmp_path, SUITE.replace("seeds = [0, 3]", "seeds = [1, 1]"))
    assert any("listed twice: 1" in f for f in found)
    found = issues(tmp_path, SUITE.replace("seeds = [0, 3]", "seeds = []"))
    assert any("suite.seeds" in f for f in found)


def test_sweeps_and_seeds_do_not_combine_yet(tmp_path: Path) -> None:
    text = SUITE.replace(
        'data = "organism:helpful"\n\n[models.agl]',
        'data = "organism:helpful"\nsteps = [1, 2]\n\n[models.agl]',
    )
    found = issues(tmp_path, text)
    assert any("seeds and sweeps cannot be combined yet" in f for f in found)


def test_a_replicated_reference_is_an_error(tmp_path: Path) -> None:
    text = SUITE.replace("seeds = [0, 3]", 'seeds = [0, 3]\nreference = "lora"')
    found = issues(tmp_path, text)
    assert any("the reference is a loaded model" in f for f in found)


def test_one_seed_replica_shares_the_single_seed_key(tmp_path: Path) -> None:
    """NAME.seed0 of a seeds = [0] suite is the model NAME of a seed = 0 suite: same store key."""
    from audit.plan import build_plan

    single = load(tmp_path, SUITE.replace("seeds = [0, 3]", "seed = 0"))
    (tmp_path / "b").mkdir()
    seeded = load(tmp_path / "b", SUITE.replace("seeds = [0, 3]", "seeds = [0]"))
    keys = {s.name: s.key for s in build_plan(single, tmp_path / "h").models}
    seeded_keys = {s.name: s.key for s in build_plan(seeded, tmp_path / "h").models}
    assert seeded_keys["agl.seed0"] == keys["agl"]
    assert seeded_keys["merged.seed0"] == keys["merged"]


def test_lineages_named_as_written_run_once_per_seed(tmp_path: Path) -> None:
    from audit.continual.forgetting import expand_lineages

    text = SUITE + (
        '\n[models.l2]\nfrom = "lora"\nintervention = "lora"\ndata = "organism:topic"\n'
        '\n[evaluators.forgetting]\nkind = "forgetting"\n'
        'tasks = ["organism:sentiment", "organism:topic"]\nlineages = [["lora", "l2"]]\n'
        'lineage_tasks = ["organism:sentiment", "organism:topic"]\n'
    )
    suite = load(tmp_path, text)  # the chain is checked per seed: valid
    assert expand_lineages([["lora", "l2"]], suite.replicas) == [
        ["lora.seed0", "l2.seed0"],
        ["lora.seed3", "l2.seed3"],
    ]
    assert expand_lineages([["aligned", "x"]], suite.replicas) == [["aligned", "x"]]
    broken = text.replace('[models.l2]\nfrom = "lora"', '[models.l2]\nfrom = "agl"')
    found = issues(tmp_path, broken)
    assert any("'l2.seed3' must have exactly one parent, 'lora.seed3'" in f for f in found)


def test_a_glob_on_the_name_as_written_selects_its_replicas(tmp_path: Path) -> None:
    from audit.suite.sweeps import match_models

    suite = load(tmp_path, SUITE)
    names = list(suite.file.models)
    assert match_models(["*ora"], names, suite.sweeps) == ["lora.seed0", "lora.seed3"]
    assert match_models(["*ora.seed3"], names, suite.sweeps) == ["lora.seed3"]


def test_a_gate_against_a_replicated_model_is_compared_within_each_seed(tmp_path: Path) -> None:
    text = SUITE + (
        '\n[[gates]]\nmetric = "refusal.refusal_rate_unsafe"\nmodels = ["merged"]\n'
        'vs = "merged.control_norm"\nmax_drop = 0.0\n'
    )
    suite = load(tmp_path, text)
    from audit.plan import GateCheck

    checks = [GateCheck(1, m, b) for m, b in gate_pairs(suite, suite.file.gates[1])]
    pairs = {(p.model, p.baseline): p.relation for p in comparison_pairs(suite, checks)}
    assert pairs[("merged.seed3", "merged.control_norm.seed3")] == "gate"
    assert ("merged.seed3", "merged.control_norm") not in pairs
