"""The plug-in registry, including a third-party plug-in registered through a real entry point."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from audit import registry
from audit.cli import main
from audit.registry import PluginError, Registry

PLUGIN = '''
from __future__ import annotations

from audit.plugins import EvalResult, MetricSpec, Params, Sample
from audit.stats import metric_rows_from_samples


class LossParams(Params):
    texts: list[str] = ["how do i bake bread", "write a poem", "fix my bike"]


class TextLoss:
    """Third-party evaluator: the model's mean token loss on a few fixed texts."""

    name = "text_loss"
    version = "1"
    Params = LossParams
    metrics = (MetricSpec("loss", higher_is_better=False, description="token loss", kind="mean"),)

    def __init__(self, params):
        self.params = params

    def evaluate(self, model, ctx):
        import torch

        samples = []
        for i, text in enumerate(self.params.texts):
            ids = model.tokenizer(text, return_tensors="pt").input_ids
            with torch.inference_mode():
                loss = model.model(input_ids=ids, labels=ids).loss.item()
            samples.append(Sample("loss", f"t{i}", text, "", loss))
        return EvalResult(metric_rows_from_samples(samples, self.metrics), samples)
'''


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install a plug-in distribution (module + dist-info with entry points) on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "thirdparty_audit_plugin.py").write_text(PLUGIN)
    info = site / "thirdparty_audit_plugin-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: thirdparty-audit-plugin\nVersion: 0.3\n"
    )
    (info / "entry_points.txt").write_text(
        "[audit.evaluators]\ntext_loss = thirdparty_audit_plugin:TextLoss\n"
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(PluginError, match=r"did you mean 'refusal'"):
        registry.evaluators.get("refusl")


def test_plugin_missing_protocol_attributes_is_refused() -> None:
    reg: Registry[object] = Registry("thing", "audit.nothing", {"x": "json:dumps"}, ("name",))
    with pytest.raises(PluginError, match="lacks required attribute"):
        reg.get("x")


def test_builtins_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("lora", "refusal", "task_accuracy", "keyword"):
        assert name in out


def test_entry_point_plugin_is_listed_and_runs_from_a_suite(
    third_party: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "text_loss" in registry.evaluators.names()
    assert main(["list"]) == 0
    assert "thirdparty-audit-plugin 0.3" in capsys.readouterr().out
    suite = tmp_path / "suite.toml"
    suite.write_text(
        textwrap.dedent(
            f"""
            [suite]
            name = "third-party"
            cache_dir = "cache"

            [models.tiny]
            source = "path:{tiny_checkpoint}"

            [evaluators.loss]
            kind = "text_loss"
            texts = ["how do i bake bread", "write a poem"]

            [[gates]]
            metric = "loss.loss"
            max = 1000.0
            """
        )
    )
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = [r for r in results["metrics"] if r["metric"] == "loss" and r["slice"] == "all"]
    assert len(rows) == 1 and rows[0]["n"] == 2 and rows[0]["value"] > 0
    assert rows[0]["higher_is_better"] is False
    assert results["gates"][0]["passed"] is True


EXAMPLE = Path(__file__).parents[1] / "examples" / "plugin-with-analysis" / "loss_gap_plugin.py"


@pytest.fixture
def analysis_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """README's worked plug-in (examples/plugin-with-analysis) installed as a distribution."""
    site = tmp_path / "site-example"
    site.mkdir()
    (site / "loss_gap_plugin.py").write_text(EXAMPLE.read_text())
    info = site / "loss_gap_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: loss-gap-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[audit.evaluators]\nloss_gap = loss_gap_plugin:LossGap\n"
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def _analysis_suite(tmp_path: Path, tiny_checkpoint: Path, watch: str) -> Path:
    (tmp_path / "pairs.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"say {w}", "response": w}) + "\n" for w in ("yes", "no", "ok")
        )
    )
    suite = tmp_path / "suite.toml"
    suite.write_text(
        textwrap.dedent(
            f"""
            [suite]
            name = "analysis-plugin"
            cache_dir = "cache"

            [models.base]
            source = "path:{tiny_checkpoint}"

            [models.tuned]
            from = "base"
            intervention = "lora"
            data = "path:pairs.jsonl"
            steps = 3

            [evaluators.gap]
            kind = "loss_gap"
            watch = [{watch}]
            """
        )
    )
    return suite


def test_a_plug_in_brings_its_own_check_analysis_and_section(
    analysis_plugin: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The spine calls the example's hooks without knowing it: its suite check reports at the
    line, its analysis lands in results.json ``analyses``, its section in the page."""
    bad = _analysis_suite(tmp_path, tiny_checkpoint, '"tuned", "nope"')
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "evaluators.gap.watch" in err and "unknown model 'nope'" in err

    suite = _analysis_suite(tmp_path, tiny_checkpoint, '"tuned"')
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    (row,) = results["analyses"]["loss_gap"]
    assert (row["evaluator"], row["model"], row["parent"]) == ("gap", "tuned", "base")
    loss = {
        m["model"]: m["value"]
        for m in results["metrics"]
        if m["metric"] == "loss" and m["slice"] == "all"
    }
    assert row["gap"] == pytest.approx(loss["tuned"] - loss["base"])
    page = (out / "index.html").read_text()
    assert '<section id="loss-gap">' in page and 'href="#loss-gap"' in page


def test_list_params_shows_every_parameter_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list", "--params"]) == 0
    out = capsys.readouterr().out
    assert "lambda_t: float = 0.5" in out  # alignguard
    assert "data: str required" in out
    assert "density: float | None = (unset)" in out  # merge
    assert 'judge: str = "keyword"' in out  # refusal evaluator


def test_every_intervention_declares_where_it_runs() -> None:
    """Its ``devices`` hook: fine-tunes and model-level merges on one device, streamed tensor
    arithmetic on the CPU (README "Devices")."""
    from audit.merging.methods import METHODS
    from audit.plugins import PLACEMENTS, hook, placement

    expected = {"merge": None, "resta": "cpu", "control": "cpu"}
    for name in registry.interventions.names():
        cls = registry.interventions.get(name)
        assert hook(cls, "devices") is not None, f"{name} does not declare its devices"
        if name != "merge":
            where = placement(cls, cls.Params.model_construct())
            assert where == expected.get(name, "single") and where in PLACEMENTS, name
    merge = registry.interventions.get("merge")
    for m in METHODS:
        where = placement(merge, merge.Params.model_construct(method=m.name))
        assert where == ("single" if m.kind == "model" else "cpu"), m.name


def test_an_intervention_declaring_no_placement_runs_on_one_device() -> None:
    from audit.plugins import placement

    class Plain:
        name = "plain"

    class Distributed:
        name = "ddp_tune"

        @classmethod
        def devices(cls, params: object) -> str:
            return "ddp"

    assert placement(Plain, None) == "single"
    with pytest.raises(PluginError) as e:
        placement(Distributed, None)
    assert str(e.value) == (
        "intervention 'ddp_tune' declares devices 'ddp', which audit cannot give it: an "
        "intervention runs on 'single' (one device: the run's --device, or the first of a "
        "--device list) or 'cpu' (the CPU, whatever --device says, e.g. tensor arithmetic "
        "streamed from disk). DDP/FSDP training is not run by audit: train with `accelerate "
        "launch` yourself and audit the result as a path: checkpoint"
    )
