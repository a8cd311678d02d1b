"""A local Ray cluster for the executor tests: ``ray.init(num_cpus=2)`` in a process of its own.

The process that starts a local cluster owns it: it prints the cluster's address, then waits
on its standard input; closing that stdin makes it call ``ray.shutdown()``, which stops the
cluster (killing it stops it too). Drivers — ``audit run --executor ray --address ADDR`` in
the tests' forked children — connect to the address. The test process itself never imports
Ray (forking a process that has Ray's threads running is unsafe).

The cluster's workers inherit this process's environment, set by the caller: the Hugging Face
offline settings, and an object store's credentials, which audit does not forward.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_HOLDER = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
print("ADDRESS " + ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""


@dataclass
class RayCluster:
    """A running local cluster: its address, and the process that owns it."""

    address: str
    proc: subprocess.Popen[str]
    log: Path

    @classmethod
    def start(cls, log: Path, env: dict[str, str], timeout: float = 120.0) -> RayCluster:
        """Start the cluster with ``env`` added to this environment; wait for its address."""
        with open(log, "w") as f:
            proc = subprocess.Popen(
                [sys.executable, "-c", _HOLDER],
                env=os.environ | env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=f,
                text=True,
            )
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("ADDRESS "):
                return cls(line.split()[1], proc, log)
            if not line and proc.poll() is not None:
                break
        proc.kill()
        raise RuntimeError(f"the Ray cluster did not start:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Shut the cluster down (kill its owner if it does not stop within 60 s)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
