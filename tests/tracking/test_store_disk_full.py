"""A SQLite tracking store whose disk fills up under a run (issue 25): the store's "database
or disk is full" is the disk's fault, not a store that is away. One line naming the store's
folder and what to do, exit 2, no traceback nor outage warning; the run's record (on another
disk) kept whole, its end FAILED with the reason; no temporary file left beside the store;
and once there is room, `python -m mnist_exp.sync` leaves the store holding the run as it
ended (nothing RUNNING), every metric point once. A sweep's job whose FAILED file the disk
cannot take still ends the sweep in that job's line.

The store (mlflow.db, mlruns/ beside it) lies on a real small tmpfs (small_disk.py), made
with its tables and experiment before a filler leaves `free` bytes of it; each size fills it
at another step of one tiny run (784-8-10, 600 digits, 2 epochs): a size that lands a step
earlier or later still checks all of the above.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from helpers import TINY, own_lines
from mnist_exp.tracking.record import EVENTS, RECORD_DIR
from small_disk import FILL_THE_DISK, in_namespace

SIZE = 16 * 1024 * 1024  # the small disk
RUN = ("data=mnist_sample", *TINY, "model.hidden_units=[8]")
EXPERIMENT = "mnist_sample"  # the run's (data.name)
WARNINGS = ("Traceback", "Logging error", "Exception ignored", "refused", "answers again",
            "not answering", "system metrics not logged", "SQLAlchemy")
MAKE_STORE = ("from mnist_exp.tracking.store import prepare_experiment as p; "
              "import sys; p(sys.argv[1], sys.argv[2])")

# name: bytes the store's disk has left once its tables and experiment are made
FILL_POINTS = {
    "start": 0,  # no room for the run's start (64 KiB): told before the run, nothing made
    "model": 24 * 4096,  # the database, as the model is logged
    "figures": 64 * 4096,  # the figures' copies in mlruns/ beside it
}
DEFAULT = ("start",)  # "model" (mid-run) is in the slow spread: it costs most of the file


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stderr: str
    stdout: str
    small: Path  # the small disk's mount point (gone: what it held was copied out)
    record: Path  # the run's record, where the run had it
    kept: Path  # a copy of the record as the run left it
    before: Path  # the small disk's files, less the filler, after the run
    after: Path  # the same after the filler was removed and sync run
    synced: dict  # sync's returncode, stdout, stderr


def store_fills(tmp_path: Path, free: int, same_disk: bool = False) -> Outcome:
    """The tiny run, its store on a disk with `free` bytes left, its run folder elsewhere
    (with `same_disk`: on that disk too, the store the default one of the folder run from);
    then the filler removed and the run's record synced, in the same namespace."""
    small, out = tmp_path / "small", tmp_path / "out"
    small.mkdir(), out.mkdir()
    launch = small if same_disk else tmp_path
    run = launch / "run"
    uri = f"sqlite:///{small / 'mlflow.db'}"
    command = [sys.executable, "-m", "mnist_exp.run", *RUN, f"hydra.run.dir={run}",
               *([] if same_disk else [f"tracking.uri={uri}"])]
    sync = [sys.executable, "-m", "mnist_exp.sync", str(run / RECORD_DIR)]
    copy = "mkdir {to} && tar -C {small} --exclude=./filler -cf - . | tar -C {to} -xf -"
    in_namespace("\n".join([
        "set -e",
        f"mount -t tmpfs -o size={SIZE} tmpfs {small}",
        shlex.join([sys.executable, "-c", MAKE_STORE, uri, EXPERIMENT]),
        f"avail=$(df -B1 --output=avail {small} | tail -1)",
        f"head -c $((avail - {free})) /dev/zero > {small}/filler",
        f"cd {launch}",
        "set +e",
        f"{shlex.join(command)} > {out}/stdout 2> {out}/stderr",
        f"echo $? > {out}/rc",
        f"cp -a {run / RECORD_DIR} {out}/record 2>/dev/null || true",  # as the run left it
        copy.format(small=small, to=out / "before"),
        f"rm {small}/filler",
        f"{shlex.join(sync)} > {out}/sync.out 2> {out}/sync.err",
        f"echo $? > {out}/sync.rc",
        copy.format(small=small, to=out / "after"),
    ]))
    synced = {"rc": int((out / "sync.rc").read_text()), "stdout": (out / "sync.out").read_text(),
              "stderr": (out / "sync.err").read_text()}
    return Outcome(int((out / "rc").read_text()), (out / "stderr").read_text(),
                   (out / "stdout").read_text(), small, run / RECORD_DIR, out / "record",
                   out / "before", out / "after", synced)


def runs_in(folder: Path) -> list:
    """The runs of the store copied to `folder`."""
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def check_one_line(outcome: Outcome) -> str:
    """Exit 2, exactly one error line naming the store's folder and what to do, and nothing
    that reads as a traceback or a store's outage."""
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    [line] = [x for x in own_lines(outcome.stderr) if x.startswith("mnist-exp: error:")]
    assert line.startswith(f"mnist-exp: error: no space left on device under {outcome.small} "
                           "(writing "), line
    assert ", the tracking store): free some space there, or choose a folder on another " \
           "disk (tracking.uri, or the folder run from)" in line, line
    for word in WARNINGS:
        assert word not in outcome.stderr + outcome.stdout, outcome.stderr + outcome.stdout
    return line


def check_nothing_left_beside(store: Path) -> None:
    """No rollback journal, write-ahead log or temporary file of SQLite's or ours."""
    names = [p.name for p in store.rglob("*")]
    assert not [n for n in names if n.endswith(("-journal", "-wal")) or n.startswith("tmp")], names


def journal(record: Path) -> list[dict]:
    """The record's events, checking that each line is whole."""
    lines = (record / EVENTS).read_bytes().split(b"\n")
    assert lines[-1] == b""
    return [json.loads(line) for line in lines[:-1]]


@pytest.mark.parametrize("point", [
    pytest.param(name, marks=[] if name in DEFAULT else pytest.mark.slow) for name in FILL_POINTS])
def test_a_store_whose_disk_fills_is_one_line_and_synced_once_there_is_room(tmp_path, point):
    outcome = store_fills(tmp_path, FILL_POINTS[point])
    line = check_one_line(outcome).removeprefix("mnist-exp: error: ")
    check_nothing_left_beside(outcome.before)
    if point == "start":  # told before Hydra made the run's folder: nothing to sync
        assert "(writing mlflow.db, the tracking store)" in line
        assert not outcome.record.parent.exists() and runs_in(outcome.before) == []
        return
    assert line.endswith(f"; its record {outcome.record} keeps the run: once there is room, "
                         f"upload it with: python -m mnist_exp.sync {outcome.record}"), line
    events = journal(outcome.kept)  # whole, and ended: the record's disk had room
    assert events[-1]["op"] == "end" and events[-1]["status"] == "FAILED"
    assert {"error": f"StoreUnwritable: {line}"} in [e.get("values") for e in events]
    assert all((outcome.kept / e["file"]).exists() for e in events if e["op"] == "artifact")
    # The store has the run open, or ended early where the database still took that much.
    assert [r.info.status for r in runs_in(outcome.before)] in ([], ["RUNNING"], ["FAILED"])

    assert outcome.synced["rc"] == 0, outcome.synced["stderr"][-3000:]
    assert "uploaded" in outcome.synced["stdout"]
    [run] = runs_in(outcome.after)  # the run as it ended, every point once
    assert run.info.status == "FAILED" and run.data.tags["error"] == f"StoreUnwritable: {line}"
    client = mlflow.MlflowClient(f"sqlite:///{outcome.after / 'mlflow.db'}")
    for key in {k for e in events if e["op"] == "metrics" for k in e["values"]}:
        recorded = sorted((e["step"], e["timestamp"]) for e in events
                          if e["op"] == "metrics" and key in e["values"])
        stored = sorted((m.step, m.timestamp) for m in client.get_metric_history(run.info.run_id,
                                                                                 key))
        assert stored == recorded, key
    check_nothing_left_beside(outcome.after)


# A sweep job's end on a full disk: its FAILED file cannot take its line.
FAILED_ON_A_FULL_DISK = FILL_THE_DISK + """
import os, sys
from pathlib import Path
from mnist_exp.sweeps.failures import jobs_failed, write_failure

sweep = Path(sys.argv[1])
(sweep / "0").mkdir(parents=True)
fill_the_disk(sweep / "filler")
write_failure(sweep / "0", "the job's own line", 2)
print(jobs_failed(sweep), jobs_failed(sweep).exit_code, sep="\\n")
"""


def test_a_failed_jobs_mark_on_a_full_disk_still_ends_the_sweep_in_one_line(tmp_path):
    small, out = tmp_path / "small", tmp_path / "out"
    small.mkdir()
    in_namespace("\n".join([
        "set -e",
        f"mount -t tmpfs -o size=64k tmpfs {small}",
        f"{shlex.join([sys.executable, '-c', FAILED_ON_A_FULL_DISK, str(small / 'sweep')])} "
        f"> {out} 2>&1 || true",
    ]))
    line, code = out.read_text().splitlines()
    assert (line, code) == (
        f"1 job(s) failed; job 0: no space left on device under {small / 'sweep' / '0'}: free "
        f"some space there, or choose a folder on another disk (hydra.sweep.dir) (see FAILED "
        f"in the job folders 0 under {small / 'sweep'})", "2")


@pytest.mark.slow
@pytest.mark.parametrize("free", [20 * 4096, 48 * 4096])
def test_the_default_store_on_the_runs_own_full_disk_leaves_nothing_running(tmp_path, free):
    """The default layout: mlflow.db in the folder run from, on the disk of the run's folder
    (and of Keras' backups) too. Whichever of them the disk refuses first, one line naming a
    folder on it; once there is room, sync leaves the run ended FAILED."""
    outcome = store_fills(tmp_path, free, same_disk=True)
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    [line] = [x for x in own_lines(outcome.stderr) if x.startswith("mnist-exp: error:")]
    assert f"no space left on device under {outcome.small}" in line, line
    for word in WARNINGS:
        assert word not in outcome.stderr + outcome.stdout, outcome.stderr + outcome.stdout
    check_nothing_left_beside(outcome.before)
    journal(outcome.kept)  # whole lines
    assert outcome.synced["rc"] == 0, outcome.synced["stderr"][-3000:]
    [run] = runs_in(outcome.after)
    assert run.info.status == "FAILED", (line, run.info)
    check_nothing_left_beside(outcome.after)
