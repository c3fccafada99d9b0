"""A record cut by a power loss or damaged on disk (issue 25): `python -m mnist_exp.sync`
uploads it up to its first unreadable line, ends the run FAILED with a tag naming that line,
says so in one line, exits 2, and uploads the healthy records beside it all the same.

A harness over a real record of a tiny offline run: for a line k, a copy is cut inside line
k (what a power loss leaves) or has line k replaced with garbage, and synced, with a healthy
copy, in one command; each copy goes to a fresh SQLite store of its own."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from helpers import offline_record, own_lines, run_module
from mnist_exp.tracking.record import DAMAGE_TAG, EVENTS, RECORD_DIR

# Ways a line goes bad: the zeros a power loss leaves, binary noise, JSON that is no event,
# an event that lacks what replaying it needs.
GARBAGE = (b"\x00" * 64, bytes(range(11, 250)), b"[1, 2, 3]", b'{"op": "metrics", "step": 0}')


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> Path:
    """The record of a tiny run made offline (1 epoch, 300 digits, its model included)."""
    return offline_record(tmp_path_factory.mktemp("offline"))


def lines_of(record: Path) -> list[bytes]:
    return (record / EVENTS).read_bytes().rstrip(b"\n").split(b"\n")


def copy_to(record: Path, folder: Path, store: Path) -> list[bytes]:
    """A copy of the record whose run goes to `store`; its lines."""
    shutil.copytree(record, folder)
    lines = lines_of(folder)
    start = json.loads(lines[0]) | {"tracking_uri": f"sqlite:///{store}"}
    lines[0] = json.dumps(start).encode()
    (folder / EVENTS).write_bytes(b"\n".join(lines) + b"\n")
    return lines


def damage(folder: Path, lines: list[bytes], k: int, how: str) -> None:
    """Cut the journal inside line k (from 1), or put garbage in its place."""
    before = b"".join(line + b"\n" for line in lines[:k - 1])
    if how == "cut":
        (folder / EVENTS).write_bytes(before + lines[k - 1][:len(lines[k - 1]) // 2])
    else:
        after = b"".join(line + b"\n" for line in lines[k:])
        (folder / EVENTS).write_bytes(before + GARBAGE[k % len(GARBAGE)] + b"\n" + after)


def the_run(store: Path):
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, runs


def assert_holds(store: Path, events: list[dict]) -> mlflow.entities.Run:
    """The store's one run has exactly the params and metric points of `events`."""
    client, [run] = the_run(store)
    params = {k: v for e in events if e["op"] == "params" for k, v in e["values"].items()}
    assert set(run.data.params) == set(params)
    points = Counter(k for e in events if e["op"] == "metrics" for k in e["values"])
    assert set(run.data.metrics) == set(points)
    for key, count in points.items():
        assert len(client.get_metric_history(run.info.run_id, key)) == count, key
    return run


def sync_damaged(record: Path, work: Path, cases: list[tuple[int, str]]) -> None:
    """Sync, in one command, a damaged copy for each (k, how) and a healthy copy; check
    each store holds what its copy's readable lines say, and the command's output."""
    healthy = copy_to(record, work / "healthy" / RECORD_DIR, work / "healthy.db")
    expected = [json.loads(line) for line in healthy]
    for k, how in cases:
        folder = work / f"{how}{k}" / RECORD_DIR
        damage(folder, copy_to(record, folder, work / f"{how}{k}.db"), k, how)
    synced = run_module("mnist_exp.sync", "--", *sorted(p.name for p in work.iterdir()
                                                      if p.is_dir()), cwd=work)
    errors = own_lines(synced.stderr)
    assert "Traceback" not in synced.stdout + synced.stderr, synced.stderr[-3000:]
    assert synced.returncode == 2, synced.stderr[-3000:]
    assert len(errors) == len(cases), errors  # one line per damaged record, nothing else
    assert assert_holds(work / "healthy.db", expected).info.status == "FINISHED"
    for k, how in cases:
        [line] = [e for e in errors if e.startswith(
            f"mnist-exp: error: {how}{k}/{RECORD_DIR}/{EVENTS}: line {k} ")]
        assert ("is cut short" in line) == (how == "cut"), line
        store = work / f"{how}{k}.db"
        if k == 1:  # the run's start is lost: no run to fill
            assert not store.exists() or not the_run(store)[1]
            continue
        run = assert_holds(store, expected[:k - 1])
        assert run.info.status == "FAILED"
        assert run.data.tags[DAMAGE_TAG] == f"{EVENTS}:{k}"
        assert f"line {k} of {EVENTS}" in run.data.tags["error"]
    again = run_module("mnist_exp.sync", "--", *sorted(p.name for p in work.iterdir()
                                                     if p.is_dir()), cwd=work)
    assert again.returncode == 0 and "nothing to upload" in again.stdout, again.stderr


def test_a_damaged_record_is_uploaded_up_to_its_damage(record, tmp_path):
    last = len(lines_of(record))
    sync_damaged(record, tmp_path, [(k, how) for k in (1, last // 2, last)
                                    for how in ("cut", "garbage")])


@pytest.mark.slow
def test_damage_at_every_line_of_a_record(record, tmp_path):
    lines = len(lines_of(record))
    sync_damaged(record, tmp_path, [(k, how) for k in range(1, lines + 1)
                                    for how in ("cut", "garbage")])
