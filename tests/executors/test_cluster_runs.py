"""``audit run --executor ray`` on a local Ray cluster (``ray.init(num_cpus=2)``): the tiny
LoRA + refusal + drift suite of the crash-safety tests gives the results of a local run, runs
independent steps at once, survives a worker and a driver killed mid-run, and runs on an
S3-compatible store (moto's server on loopback)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from forked_runs import Reference, executed, normalized, start, unverified_entries
from ray_cluster import RayCluster

pytestmark = pytest.mark.slow

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback with the bucket ``audit``."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url, **_boto_keys()).create_bucket(Bucket="audit")
    yield url
    server.stop()


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A local two-CPU Ray cluster whose workers hold the S3 server's (dummy) credentials."""
    if importlib.util.find_spec("ray") is None:  # not imported: forked drivers import it
        pytest.skip("ray is not installed")
    log = tmp_path_factory.mktemp("ray") / "cluster.log"
    ray = RayCluster.start(log, S3_ENV | {"OMP_NUM_THREADS": "1"})
    yield ray
    ray.stop()


def _run(
    ref: Reference,
    cluster: RayCluster,
    out: Path,
    store: Path | str,
    env: dict[str, str] | None = None,
) -> object:
    child = start(
        ref.suite,
        out,
        store,
        env={"RAY_AUTH_MODE": "token", **(env or {})},  # the token ray.init left in ~/.ray
        extra=["--executor", "ray", "--address", cluster.address],
    )
    child.wait(600)
    return child


def _overlapping(timeline: list[dict[str, object]]) -> list[tuple[str, str]]:
    """Pairs of steps that ran at the same time in different processes."""
    pairs = []
    for i, a in enumerate(timeline):
        for b in timeline[i + 1 :]:
            if (
                a["pid"] != b["pid"]
                and a["started"] < b["finished"]
                and b["started"] < a["finished"]
            ):  # type: ignore[operator]
                pairs.append((str(a["step"]), str(b["step"])))
    return pairs


def test_ray_run_equals_local_run_with_steps_at_once(
    reference_run: Reference, cluster: RayCluster, tmp_path: Path
) -> None:
    ref = reference_run
    out = tmp_path / "out"
    child = _run(ref, cluster, out, tmp_path / "store")
    assert child.returncode == ref.code, child.output  # type: ignore[attr-defined]
    results = child.results()  # type: ignore[attr-defined]
    assert normalized(results) == normalized(ref.results)
    assert len(executed(results)) == 6  # a fresh store: every step computed on the cluster
    timeline = json.loads((out / "cluster-steps.json").read_text())
    assert sorted(t["step"] for t in timeline) == sorted(s["step"] for s in results["steps"])
    assert _overlapping(timeline), timeline  # independent steps ran at once


def test_a_killed_worker_is_retried_and_the_results_are_unchanged(
    reference_run: Reference, cluster: RayCluster, tmp_path: Path
) -> None:
    ref = reference_run
    flag = tmp_path / "killed-once"
    env = {"AUDIT_KILL_AT": "train.step:2", "AUDIT_FAULT_ONCE": str(flag)}
    child = _run(ref, cluster, tmp_path / "out", tmp_path / "store", env)
    assert flag.exists()  # a worker reached the LoRA's second step and was SIGKILLed there
    assert child.returncode == ref.code, child.output  # type: ignore[attr-defined]
    results = child.results()  # type: ignore[attr-defined]
    assert normalized(results) == normalized(ref.results)
    assert unverified_entries(tmp_path / "store") == []


def test_a_killed_driver_resumes_from_the_store(
    reference_run: Reference, cluster: RayCluster, tmp_path: Path
) -> None:
    ref = reference_run
    store = tmp_path / "store"
    killed = _run(ref, cluster, tmp_path / "a", store, {"AUDIT_KILL_AT": "cluster.step_done:2"})
    assert killed.returncode == -9, killed.output  # type: ignore[attr-defined]
    assert not (tmp_path / "a" / "results.json").exists()
    assert unverified_entries(store) == []
    finished = len(list((store / "entries").iterdir()))
    assert finished >= 2
    child = _run(ref, cluster, tmp_path / "b", store)
    assert child.returncode == ref.code, child.output  # type: ignore[attr-defined]
    results = child.results()  # type: ignore[attr-defined]
    assert normalized(results) == normalized(ref.results)
    assert len(executed(results)) <= 6 - 2  # what the killed driver finished is reused


def test_ray_run_on_an_s3_store(
    reference_run: Reference,
    cluster: RayCluster,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = reference_run
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    url = f"s3://audit/runs-{tmp_path.name}"
    flag = tmp_path / "killed-once"  # a worker dies holding the fine-tune's lease lock
    env = {
        "AUDIT_REMOTE_CACHE": str(tmp_path / "cache-a"),
        "AUDIT_KILL_AT": "train.step:2",
        "AUDIT_FAULT_ONCE": str(flag),
    }
    child = _run(ref, cluster, tmp_path / "a", url, env)
    assert flag.exists()
    assert child.returncode == ref.code, child.output  # type: ignore[attr-defined]
    assert normalized(child.results()) == normalized(ref.results)  # type: ignore[attr-defined]
    # another machine (another local cache) finds every step in the object store
    env = {"AUDIT_REMOTE_CACHE": str(tmp_path / "cache-b")}
    again = _run(ref, cluster, tmp_path / "b", url, env)
    assert again.returncode == ref.code, again.output  # type: ignore[attr-defined]
    results = again.results()  # type: ignore[attr-defined]
    assert normalized(results) == normalized(ref.results)
    assert executed(results) == []
