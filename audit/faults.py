"""Fault injection for the crash-safety tests: named points where a run can be killed on purpose.

``fault_point(name)`` does nothing unless the environment asks for that point:

- ``AUDIT_KILL_AT=NAME`` (the first time the point is reached) or ``AUDIT_KILL_AT=NAME:N`` (the
  N-th time) sends the process ``SIGKILL`` — no cleanup, no ``finally``, no ``atexit``: what a
  power cut, the OOM killer or ``kill -9`` leaves behind.
- ``AUDIT_STOP_AT=NAME[:N]`` sends it ``SIGSTOP`` instead, so a test can look at the frozen
  process (which locks it holds, which files it left) and then continue or kill it.

- ``AUDIT_FAULT_ONCE=PATH`` fires a kill or stop only in the first process that creates
  ``PATH`` (``O_EXCL``): on a cluster, the worker that retries a killed step inherits the same
  variables and must not be killed again.

When neither variable is set a call costs two environment lookups; nothing else is read or
counted. The points (hits are counted per process, per name):

``train.step``
    the LoRA training loop (``lora``, ``alignguard``, ``backdoor``, …), after each optimiser
    step; the step lock of the model being trained is held.
``store.publish``
    :meth:`audit.store.core.Store.put`: the entry is complete in ``tmp/`` (files and manifest
    fsynced), not yet renamed into ``entries/``.
``remote.upload``
    :mod:`audit.store.remote`: an entry's files are uploaded to the object store, its manifest
    (which publishes it) is not.
``runner.eval_done``
    after an evaluation's entry is published and read back, before the next step.
``cluster.step_done``
    the driver of a Ray run (:mod:`audit.executors.cluster`), after each step's report arrives.
``outputs.samples_written``
    :func:`audit.analysis.assemble.write_outputs`: ``samples.jsonl`` is written, ``index.html`` and
    ``results.json`` are not.
``write:FILENAME``
    :func:`audit.store.core.atomic_write_text` and :func:`audit.report.render.write_page`: the
    temporary file beside ``FILENAME`` is complete and fsynced, not yet renamed over it (e.g.
    ``write:results.json``; ``write:index.html:1`` is a run's report, ``:2`` the gallery).
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "AUDIT_KILL_AT"
STOP_ENV = "AUDIT_STOP_AT"
ONCE_ENV = "AUDIT_FAULT_ONCE"
FAULT_ENVS = (KILL_ENV, STOP_ENV, ONCE_ENV)

_hits: dict[str, int] = {}


def _wants(spec: str | None, name: str, hit: int) -> bool:
    if not spec:
        return False
    target, _, nth = spec.rpartition(":")
    if target and nth.isdigit():
        return target == name and int(nth) == hit
    return spec == name and hit == 1


def _first(once: str | None) -> bool:
    """Whether this process may fire: no ``AUDIT_FAULT_ONCE``, or it created that file."""
    if not once:
        return True
    try:
        os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def fault_point(name: str) -> None:
    """Kill (``AUDIT_KILL_AT``) or stop (``AUDIT_STOP_AT``) this process here, if asked to."""
    kill, stop = os.environ.get(KILL_ENV), os.environ.get(STOP_ENV)
    if not kill and not stop:
        return
    hit = _hits[name] = _hits.get(name, 0) + 1
    stopping, killing = _wants(stop, name, hit), _wants(kill, name, hit)
    if (stopping or killing) and not _first(os.environ.get(ONCE_ENV)):
        return
    if stopping:
        os.kill(os.getpid(), signal.SIGSTOP)
    if killing:
        os.kill(os.getpid(), signal.SIGKILL)
