"""A disk that fills up under a run (issue 25, item 4): whatever step of the run it fills at,
one line naming the folder, exit 2, no traceback and no misleading warning; the run on its
store (a SQLite store outside the full disk) FAILED with the reason in its `error` tag; no
half-written or temporary file left in its record; and a later sync leaves the run as it is.

A harness over one real tiny run: the run folder (or the whole launch folder) lies on a real
small tmpfs, of which a filler file leaves exactly N bytes free, each N chosen so the disk
fills at another step: Hydra's own .hydra/ (0 bytes), the record's first copies and events,
the model's logging, the figures, the run's end, and Keras' per-epoch backup in the launch
folder. The tmpfs is mounted in a mount namespace of the command's own (`unshare --mount`
as root, or in a user namespace of its own otherwise), so it goes away with the command and
needs no cleanup. The steps the sizes fall on are those of this run (a 784-8-10 network, 600
digits, 2 epochs): a size that lands a step earlier or later still checks all of the above.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from helpers import TINY, own_lines, run_module
from mnist_exp.tracking.record import EVENTS, RECORD_DIR
from small_disk import FILL_THE_DISK, in_namespace

SIZE = 8 * 1024 * 1024  # the small disk; a filler leaves `free` bytes of it
RUN = ("data=mnist_sample", *TINY, "model.hidden_units=[8]")
WARNINGS = ("Traceback", "Logging error", "Exception ignored", "refused", "answers again",
            "not answering")

# name: (bytes left free, the launch folder on the small disk too, not just the run folder)
FILL_POINTS = {
    "hydra": (0, False),  # Hydra's .hydra/, before the job: no run is made
    "record": (9 * 4096, False),  # the record's copies of .hydra/ and its events
    "inputs": (12 * 4096, False),  # the record, as the datasets and model summary go in
    "model": (32 * 4096, False),  # the model saved into the record
    "figures": (72 * 4096, False),  # the figures
    "end": (96 * 4096, False),  # the run's log copied in, its last events
    "backup": (32 * 4096, True),  # Keras' backup of an epoch, in the launch folder
}
DEFAULT = ("hydra", "model")  # 0 bytes (no run made), and a full disk mid-run


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stderr: str
    stdout: str  # the job's log lines (its warnings among them)
    small: Path  # the small disk's mount point (gone: its files were copied to `kept`)
    kept: Path  # the run folder as the command left it
    uri: str


def run_on_small_disk(tmp_path: Path, free: int, launch_inside: bool) -> Outcome:
    """The tiny run with `free` bytes left on the disk under its run folder (and, with
    `launch_inside`, the folder it is run from); its store in tmp_path, off that disk."""
    small, out, store = tmp_path / "small", tmp_path / "out", tmp_path / "store"
    for folder in (small, out, store):
        folder.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    launch = small if launch_inside else tmp_path
    command = [sys.executable, "-m", "mnist_exp.run", *RUN, f"tracking.uri={uri}",
               f"hydra.run.dir={small / 'run'}"]
    script = "\n".join([
        "set -e",
        f"mount -t tmpfs -o size={SIZE} tmpfs {small}",
        f"head -c {SIZE - free} /dev/zero > {small}/filler",
        f"cd {launch}",
        "set +e",
        f"{shlex.join(command)} > {out}/stdout 2> {out}/stderr",
        f"echo $? > {out}/rc",
        f"cp -a {small}/run {out}/ 2>/dev/null || true",  # the run folder, for the checks
    ])
    in_namespace(script)
    return Outcome(int((out / "rc").read_text()), (out / "stderr").read_text(),
                   (out / "stdout").read_text(), small, out / "run", uri)


def check_one_line(outcome: Outcome) -> str:
    """Exit 2, exactly one error line naming the folder on the small disk, and nothing that
    reads as a traceback or a store's fault."""
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    [line] = [x for x in own_lines(outcome.stderr) if x.startswith("mnist-exp: error:")]
    assert f"no space left on device under {outcome.small}" in line, line
    assert "free some space there" in line
    for word in WARNINGS:
        assert word not in outcome.stderr + outcome.stdout, outcome.stderr + outcome.stdout
    return line


def store_runs(uri: str) -> list:
    if not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    client = mlflow.MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def check_record(folder: Path) -> None:
    """Nothing half-written or temporary: whole journal lines, no tmp files, and no copies
    of files left (the store has the run, so the record discarded them)."""
    record = folder / RECORD_DIR
    names = {p.relative_to(record).as_posix() for p in record.rglob("*") if p.is_file()}
    assert not [n for n in names if n.rsplit("/", 1)[-1].startswith("tmp")], names
    assert not [n for n in names if n.startswith(("files/", "model/", "checkpoints/"))], names
    journals = [record / name for name in (EVENTS, f"{EVENTS}.uploaded") if name in names]
    assert len(journals) == 1, names
    lines = journals[0].read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])


@pytest.mark.parametrize("point", [
    pytest.param(name, marks=[] if name in DEFAULT else pytest.mark.slow) for name in FILL_POINTS])
def test_a_disk_full_at_any_step_is_one_line_and_a_failed_run(tmp_path, point):
    free, launch_inside = FILL_POINTS[point]
    outcome = run_on_small_disk(tmp_path, free, launch_inside)
    line = check_one_line(outcome)
    runs = store_runs(outcome.uri)
    if point == "hydra":  # stopped before Hydra wrote a thing: no run, no folder
        assert runs == [] and not outcome.kept.exists()
        return
    [run] = runs
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == f"FolderUnwritable: {line.removeprefix('mnist-exp: error: ')}"
    check_record(outcome.kept)
    if point == "model":  # the record, once there is room, holds nothing the store lacks
        synced = run_module("mnist_exp.sync", str(outcome.kept / RECORD_DIR), cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr[-2000:]
        [again] = store_runs(outcome.uri)
        assert (again.info.status, again.info.end_time) == ("FAILED", run.info.end_time)


# A live run's record whose disk fills: events are emitted until the journal needs a block
# the disk has not got; then the run ends as tracked_run ends a failed one.
RECORD_ON_A_FULL_DISK = FILL_THE_DISK + """
import json, sys, time
from pathlib import Path
from mnist_exp.errors import FolderUnwritable
from mnist_exp.tracking.record import RunRecord
from mnist_exp.tracking.tracker import Tracker

small, uri, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
tracker = Tracker(RunRecord.create(small / "run" / "mlflow_record"), uri)
tracker.record.hold()
now = lambda: int(time.time() * 1000)
tracker.emit("start", experiment_id=None, experiment_name="full", run_name="r", tags={},
             start_time=now(), tracking_uri=uri)
fill_the_disk(small / "filler")
line = None
for step in range(1000):
    try:
        tracker.emit("metrics", values={"loss": 1.0 / (step + 1)}, step=step, timestamp=now())
    except FolderUnwritable as e:
        error = tracker.failed(e)
        tracker.emit("tags", values={"error": str(error)})
        tracker.emit("end", status="FAILED", end_time=now())
        line = str(error)
        break
out.write_text(json.dumps({"line": line, "steps": step + 1, "uploaded": tracker.finish(5),
                           "run_id": tracker.run_id}))
"""


def test_a_record_whose_disk_fills_uploads_the_rest_from_memory(tmp_path):
    """The record's own write path: the event the disk refused, the error and the end reach
    the store from memory, through the same uploader; the journal keeps whole lines and is
    set aside once the store has everything, so sync does not end the run again."""
    small, store = tmp_path / "small", tmp_path / "store"
    small.mkdir(), store.mkdir()
    uri, result = f"sqlite:///{store / 'mlflow.db'}", tmp_path / "result.json"
    in_namespace("\n".join([
        "set -e",
        f"mount -t tmpfs -o size=256k tmpfs {small}",
        shlex.join([sys.executable, "-c", RECORD_ON_A_FULL_DISK, str(small), uri, str(result)]),
        f"cp -a {small}/run {tmp_path}/kept",
    ]))
    done = json.loads(result.read_text())
    assert done["line"] == (f"no space left on device under {small / 'run'} (writing "
                            f"{RECORD_DIR}/{EVENTS}): free some space there, or choose a folder "
                            "on another disk (hydra.run.dir, or the folder run from)")
    assert done["uploaded"] and done["steps"] > 1
    run = mlflow.MlflowClient(uri).get_run(done["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["error"] == done["line"]
    history = mlflow.MlflowClient(uri).get_metric_history(done["run_id"], "loss")
    assert sorted(m.step for m in history) == list(range(done["steps"]))  # the refused one too
    kept = tmp_path / "kept" / RECORD_DIR
    assert sorted(p.name for p in kept.iterdir()) == ["events.jsonl.uploaded", "ids.json", "lock",
                                                      "uploaded"]
    journal = [json.loads(x) for x in (kept / f"{EVENTS}.uploaded").read_text().splitlines()]
    assert [e["op"] for e in journal] == ["start"] + ["metrics"] * (done["steps"] - 1)
    synced = run_module("mnist_exp.sync", str(tmp_path / "kept"), cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-2000:]
    again = mlflow.MlflowClient(uri).get_run(done["run_id"])
    assert (again.info.status, again.info.end_time) == ("FAILED", run.info.end_time)
