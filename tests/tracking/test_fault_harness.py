"""A fault at write k loses nothing and doubles nothing (issue 25): a tiny run (its model
included) whose store is killed at write k, or refuses write k, then `python -m
mnist_exp.sync`; the store then holds exactly what the same run without a fault holds. A
run (or sweep) whose own process is killed at write k then holds what its record held.

One real `mlflow server` for the module, behind the fault proxy of scripts/fault_proxy.py
(a thread here); every k is scripts/fault_harness.py's, which these tests share. The default
suite tries one k of each kind, the slow suite a spread of k."""

from __future__ import annotations

import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import fault_harness  # scripts/ is not a package: found through sys.path
from fault_proxy import FaultProxy, MlflowServer

# The fault-free run's writes (34, MLflow 3): 1 experiment, 2 run, 3 params, 4-7 config
# artifacts, 8-10 dataset inputs, 13 logged model, 16-23 its files, 24 its finalizing,
# 25-26 metrics, 27-33 reports and plots, 34 the run's end.
SAMPLE = (("killed", 18), ("refused", 1))  # 18: a model half-logged, then filled in
# A spread that keeps CI's slow run short: scripts/fault_harness.py --k all walks every k.
SPREAD = (3, 8, 14, 21, 26, 34)  # 14 and 21: a model half-logged


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The server, its proxy, and what the fault-free run left in it."""
    folder = tmp_path_factory.mktemp("fault-store")
    server = MlflowServer(folder / "server")
    server.start()
    proxy = FaultProxy(("127.0.0.1", server.port))
    try:
        expected = fault_harness.reference(proxy, folder / "reference")
        yield proxy, expected, len(proxy.writes)
    finally:
        proxy.close()
        server.stop()


def test_the_reference_holds_a_whole_run(store):
    _proxy, [run], writes = store
    assert run["status"] == "FINISHED"
    assert writes == 34  # SAMPLE and SPREAD name writes of this run: recount if it changes
    [(_name, status, linked)] = run["models"]
    assert status.endswith("READY") and "test_accuracy" in {key for (key, *_), _ in linked}
    assert {"config.yaml", "curves.png", "run.log"} <= set(run["artifacts"])
    assert ("accuracy", 0) in {(key, step) for key, step, _ in run["metrics"]}


@pytest.mark.parametrize(("kind", "k"), SAMPLE)
def test_a_fault_at_write_k_loses_nothing(store, tmp_path, kind, k):
    proxy, expected, _ = store
    assert fault_harness.check_fault(proxy, kind, k, tmp_path, expected) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["killed", "refused"])
@pytest.mark.parametrize("k", SPREAD)
def test_a_fault_at_any_write_loses_nothing(store, tmp_path, kind, k):
    proxy, expected, _ = store
    assert fault_harness.check_fault(proxy, kind, k, tmp_path, expected) == []


@pytest.mark.slow
@pytest.mark.parametrize("k", (2, 14, 24))
def test_a_write_taken_whose_answer_was_lost_is_not_doubled(store, tmp_path, k):
    """The store took write k but its answer was lost: the retry must not make a second run
    (write 2, the run's creation, did: the first left RUNNING), model or point."""
    proxy, expected, _ = store
    assert fault_harness.check_fault(proxy, "lost_reply", k, tmp_path, expected) == []


@pytest.fixture(scope="module")
def sweep_reference(store, tmp_path_factory):
    """What the fault-free 2-job sweep left in the store, and how many writes it made."""
    proxy, _, _ = store
    expected = fault_harness.reference(proxy, tmp_path_factory.mktemp("sweep"), sweep=True)
    return expected, list(proxy.writes)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["killed", "refused"])
def test_a_fault_in_a_sweeps_summary_loses_nothing(store, sweep_reference, tmp_path, kind):
    """A 2-job grid sweep whose store fails at one of its last writes (the parent's summary:
    best_* metrics, best_run_id tag, ranking and plot), then sync of the sweep folder."""
    proxy, _, _ = store
    expected, writes = sweep_reference[0], len(sweep_reference[1])
    [parent] = [r for r in expected if r["tags"].get("mnist_exp.sweep") == "parent"]
    assert len(expected) == 3 and "best_run_id" in parent["tags"]
    assert fault_harness.check_fault(proxy, kind, writes - 3, tmp_path, expected,
                                     sweep=True) == []


@pytest.mark.slow
@pytest.mark.parametrize("k", (2, 13, 24, 34))
def test_a_run_killed_outright_at_write_k_is_whole_once_synced(store, tmp_path, k):
    """The run's own process killed (SIGKILL) once the store took write k, before it heard
    the answer: once synced, the store holds all its record held, once, and nothing
    RUNNING. 2: the run made, its id unheard; 13: its model made; 24: the model finished."""
    proxy, expected, _ = store
    assert fault_harness.check_fault(proxy, "client_killed", k, tmp_path, expected) == []


@pytest.mark.slow
@pytest.mark.parametrize("made", (1, 3))
def test_a_sweep_killed_outright_as_a_run_is_made_is_whole_once_synced(
        store, sweep_reference, tmp_path, made):
    """The sweep's process killed once the store made run `made` (1: the parent, before the
    sweep's folder named it; 3: job 1's, before its record heard the id; CI caught that
    one counted twice and doubled)."""
    proxy, _, _ = store
    expected, writes = sweep_reference
    creates = [k for k, (_, path) in enumerate(writes, 1) if path.endswith("/runs/create")]
    assert len(creates) == 3  # the parent and two jobs
    assert fault_harness.check_fault(proxy, "client_killed", creates[made - 1], tmp_path,
                                     expected, sweep=True) == []
