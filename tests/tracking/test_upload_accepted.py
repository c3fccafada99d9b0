"""Uploaded means accepted, and a record knows its store (issue 25).

An event counts as uploaded only once its store took it: a store that refuses (wrong
credentials, a run it lacks, a value, not an MLflow store at all) stops that record's upload
with one line and exit 2, the record kept whole. A record synced to a store other than its
own is copied there as a new run, and kept, with its files, until its own store has it too.
A value a store refuses by its nature (a param too long) is recorded cut to fit, whole in an
artifact.

Real `mlflow server`s on 127.0.0.1 whose stores refuse a value too long instead of cutting
it (MLFLOW_TRUNCATE_LONG_VALUES=false, as a stricter or older server does), a real
PostgreSQL (scripts/services.py) for the password, and one real record of a tiny offline run
whose description is too long for a param or a tag, copied for each test."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
from mlflow.utils import validation

from helpers import ROOT, offline_record, own_lines, run_module, start_module
from mnist_exp.errors import StoreRefused, redact
from mnist_exp.tracking import limits
from mnist_exp.tracking.record import EVENTS, RECORD_DIR, RunRecord
from mnist_exp.tracking.replay import Uploader
from mnist_exp.tracking.tracker import Tracker

sys.path.insert(0, str(ROOT / "scripts"))
from fault_proxy import MlflowServer  # scripts/ is no package: found on sys.path

# Its stores refuse a value too long instead of cutting it, as a stricter or older one does.
STRICT = {"MLFLOW_TRUNCATE_LONG_VALUES": "false"}

DESCRIPTION = "far-too-long-" * 700  # 9,100 characters: over a param's 6,000 and a tag's 8,000
WHOLE = "whole_values/params/tracking.description.txt"


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> Path:
    """The record of a tiny run made offline (1 epoch, 300 digits, its model included),
    whose description is too long for a param or a tag."""
    return offline_record(tmp_path_factory.mktemp("offline"),
                          f"tracking.description={DESCRIPTION}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers, A and B, for the module (each test its own experiment in them)."""
    folder = tmp_path_factory.mktemp("servers")
    pair = MlflowServer(folder / "a", STRICT), MlflowServer(folder / "b", STRICT)
    try:
        for server in pair:
            server.start()
        yield pair
    finally:
        for server in pair:
            server.stop()


def copy_record(record: Path, work: Path, uri: str, experiment: str) -> Path:
    """A copy of the record in work/run, recorded for the store at `uri`, into `experiment`."""
    folder = work / "run" / RECORD_DIR
    shutil.copytree(record, folder)
    lines = (folder / EVENTS).read_text().splitlines()
    start = json.loads(lines[0]) | {"tracking_uri": redact(uri), "experiment_name": experiment}
    (folder / EVENTS).write_text("\n".join([json.dumps(start), *lines[1:]]) + "\n")
    return folder


def journal(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / EVENTS).read_text().splitlines()]


def upload_first(folder: Path, uri: str, count: int) -> None:
    """Upload the first `count` events, as a live run whose server died after them did."""
    path = folder / EVENTS
    whole = path.read_text()
    path.write_text("".join(line + "\n" for line in whole.splitlines()[:count]))
    Uploader(RunRecord(folder), uri).upload()
    path.write_text(whole)


def said(result: subprocess.CompletedProcess, start: str) -> str:
    """sync's one line starting with `start` (MLflow adds its own "View run" lines)."""
    [line] = [line for line in result.stdout.splitlines() if line.startswith(start)]
    return line


def runs_of(uri: str, experiment: str) -> tuple[mlflow.MlflowClient, list]:
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id]) if found else []


def assert_holds(client: mlflow.MlflowClient, run, events: list[dict]) -> None:
    """The run holds the record's every param and metric point, its files, the description
    whole, and its end."""
    params = {k: str(v) for e in events if e["op"] == "params" for k, v in e["values"].items()}
    assert run.data.params == params
    cut = params["tracking.description"]
    assert len(cut) <= limits.PARAM_VALUE and cut.endswith(f"whole in {WHOLE}]")
    for key, count in Counter(k for e in events if e["op"] == "metrics"
                              for k in e["values"]).items():
        assert len(client.get_metric_history(run.info.run_id, key)) == count, key
    assert run.info.status == events[-1]["status"]
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves.png", "whole_values"} <= files
    with tempfile.TemporaryDirectory() as scratch:
        whole = client.download_artifacts(run.info.run_id, WHOLE, scratch)
        assert Path(whole).read_text() == DESCRIPTION
    assert run.outputs.model_outputs


def test_the_limits_are_mlflows():
    assert limits.PARAM_VALUE == validation.MAX_PARAM_VAL_LENGTH
    assert limits.TAG_VALUE == validation.MAX_TAG_VAL_LENGTH
    assert limits.KEY == validation.MAX_ENTITY_KEY_LENGTH


def test_a_too_long_value_is_recorded_cut_to_fit_and_kept_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "false")  # the store refuses, not cuts
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    tracker = Tracker(RunRecord.create(tmp_path / RECORD_DIR), uri)
    tracker.emit("start", experiment_id=None, experiment_name="limits", run_name="r" * 300,
                 tags={"note": "t" * 9000}, start_time=1, tracking_uri=uri)
    long_key = "k" * 300
    tracker.emit("params", values={"long": "p" * 7000, long_key: 1})
    tracker.emit("metrics", values={long_key: 0.5}, step=0, timestamp=2)
    tracker.emit("end", status="FINISHED", end_time=3)
    assert tracker.finish(5) and tracker.refused is None
    client, [run] = runs_of(uri, "limits")
    assert run.info.status == "FINISHED" and len(run.info.run_name) == limits.RUN_NAME
    assert run.data.params["long"].startswith("p" * 5000)
    assert run.data.params["long"].endswith("whole in whole_values/params/long.txt]")
    assert run.data.tags["note"].endswith("whole in whole_values/tags/note.txt]")
    [key] = [k for k in run.data.params if k != "long"]
    assert len(key) == limits.KEY and key.startswith("k" * 200)
    assert list(run.data.metrics) == [key]  # the same key for a param and a metric
    with tempfile.TemporaryDirectory() as scratch:
        path = client.download_artifacts(run.info.run_id, "whole_values/params/long.txt", scratch)
        assert Path(path).read_text() == "p" * 7000


def test_a_refusal_mid_run_keeps_the_record_whole_and_ends_the_run_in_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    tracker = Tracker(RunRecord.create(tmp_path / RECORD_DIR), uri)
    tracker.emit("start", experiment_id=None, experiment_name="refused", run_name="r",
                 tags={}, start_time=1, tracking_uri=uri)
    client = mlflow.MlflowClient(uri)
    client.log_param(tracker.run_id, "lr", "0.1")  # someone else's value for our param
    tracker.emit("params", values={"lr": "0.2"})
    tracker.emit("metrics", values={"loss": 1.0}, step=0, timestamp=2)  # the run goes on
    tracker.emit("end", status="FINISHED", end_time=3)
    with pytest.raises(StoreRefused) as refused:
        tracker.finish(5)
    line = str(refused.value)
    assert f"tracking store {uri} refused the run's params (" in line, line
    assert f"python -m mnist_exp.sync {tracker.record.folder}" in line
    assert not refused.value.whole_store
    assert tracker.record.uploaded == 1 and tracker.record.pending == 3  # nothing counted
    run = client.get_run(tracker.run_id)
    assert run.info.status == "RUNNING" and not run.data.metrics


@pytest.mark.slow
def test_a_run_whose_store_refuses_mid_run_trains_on_and_ends_in_one_line(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = start_module("mnist_exp.run", "data=mnist_sample", "data.max_test_samples=300",
                       "trainer.batch_size=32", "tracking.system_metrics=false",
                       "trainer.epochs=12", f"tracking.uri={store}", "hydra.run.dir=run",
                       cwd=tmp_path)
    for line in run.stdout:
        if line.startswith("Epoch 2/"):
            break
    client = mlflow.MlflowClient(store)
    [logged] = runs_of(store, "mnist_sample")[1]
    client.delete_run(logged.info.run_id)  # deleted in the UI mid-run: writes are refused
    out, err = run.communicate(timeout=600)
    assert run.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "refused the run's" not in out  # no warning on the way
    folder = tmp_path / "run" / RECORD_DIR
    assert own_lines(err)[-1].startswith(f"mnist-exp: error: tracking store {store} refused "
                                         "the run's metrics (")
    assert own_lines(err)[-1].endswith(f"python -m mnist_exp.sync {folder}")
    assert RunRecord(folder).pending and (folder / "model").is_dir()  # trained on, kept

    client.restore_run(logged.info.run_id)
    synced = run_module("mnist_exp.sync", "run", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    run_after = client.get_run(logged.info.run_id)
    assert run_after.info.status == "FINISHED" and "test_accuracy" in run_after.data.metrics
    assert len(client.get_metric_history(logged.info.run_id, "loss")) == 12


def test_sync_says_what_the_store_refused_and_keeps_the_record(record, tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    folder = copy_record(record, tmp_path, store, "refused")
    upload_first(folder, store, 1)  # the run is made
    ops = [e["op"] for e in journal(folder)]
    params = journal(folder)[ops.index("params")]
    key = sorted(params["values"])[0]
    mlflow.MlflowClient(store).log_param(RunRecord(folder).ids["run_id"], key, "not ours")
    synced = run_module("mnist_exp.sync", "run", cwd=tmp_path)
    assert synced.returncode == 2, synced.stderr[-3000:]
    [line] = own_lines(synced.stderr)
    assert line.startswith(f"mnist-exp: error: run/{RECORD_DIR}: not uploaded: tracking store "
                           f"{store} refused the run's params ("), line
    assert "uploaded " not in synced.stdout and "nothing to upload" not in synced.stdout
    assert RunRecord(folder).uploaded == ops.index("params")  # what came before it only
    assert (folder / "files" / "config.yaml").is_file()
    _, [run] = runs_of(store, "refused")
    assert run.info.status == "RUNNING" and not run.data.metrics
    again = run_module("mnist_exp.sync", "run", cwd=tmp_path)  # refused again, not forgotten
    assert again.returncode == 2 and own_lines(again.stderr) == [line]


@pytest.fixture
def not_mlflow(tmp_path):
    """A web server that is no MLflow server (Python's own, serving a folder)."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_store_that_is_no_mlflow_store_is_one_line_and_the_record_kept(
        record, tmp_path, not_mlflow):
    folder = copy_record(record, tmp_path, f"sqlite:///{tmp_path / 'own.db'}", "kind")
    (tmp_path / "notes.db").write_text("not a database\n" * 100)
    for uri in (not_mlflow, f"sqlite:///{tmp_path / 'notes.db'}"):
        synced = run_module("mnist_exp.sync", "--tracking-uri", uri, "run", cwd=tmp_path)
        assert synced.returncode == 2, synced.stderr[-3000:]
        [line] = own_lines(synced.stderr)
        assert line.startswith(f"mnist-exp: error: tracking store {uri} is not an MLflow "
                               "tracking store ("), line
        assert "uploaded " not in synced.stdout and "Traceback" not in synced.stderr
    assert RunRecord(folder).uploaded == 0 and (folder / "files").is_dir()
    assert not (folder / "stores").exists() or not any((folder / "stores").rglob("ids.json"))


def test_a_run_whose_server_died_is_copied_to_another_and_kept_for_its_own(
        record, tmp_path, servers):
    """The issue's first case: a run whose server A died after 8 events, synced with
    --tracking-uri pointing at server B, then to A once it is back."""
    a, b = servers
    folder = copy_record(record, tmp_path, a.url, "died")
    events = journal(folder)
    upload_first(folder, a.url, 8)
    a.stop()
    try:
        copied = run_module("mnist_exp.sync", "--tracking-uri", b.url, "run", cwd=tmp_path)
    finally:
        a.start()
    assert copied.returncode == 0, copied.stderr[-3000:]
    assert not own_lines(copied.stderr), copied.stderr
    client, [copy] = runs_of(b.url, "died")
    assert_holds(client, copy, events)
    assert said(copied, "copied ").startswith(f"copied run/{RECORD_DIR} to {b.url}: run "
                                              f"{copy.info.run_id} FINISHED, a new run there;")
    assert RunRecord(folder).uploaded == 8 and (folder / "model").is_dir()  # kept for A

    # A back, at another name for its address: the run there, not a copy, is filled in.
    alias = f"http://localhost:{a.port}"
    synced = run_module("mnist_exp.sync", "--tracking-uri", alias, "run", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    client, [own] = runs_of(a.url, "died")
    assert own.info.run_id == RunRecord(folder).ids["run_id"] != copy.info.run_id
    assert said(synced, "uploaded ") == f"uploaded run/{RECORD_DIR}: run {own.info.run_id} FINISHED"
    assert_holds(client, own, events)
    assert not (folder / "files").exists() and not (folder / "model").exists()

    for again in (run_module("mnist_exp.sync", "run", cwd=tmp_path),
                  run_module("mnist_exp.sync", "--tracking-uri", b.url, "run", cwd=tmp_path)):
        assert again.returncode == 0 and "nothing to upload" in again.stdout, again.stderr
    assert len(runs_of(b.url, "died")[1]) == 1
    assert len(client.get_metric_history(own.info.run_id, "loss")) == 1


@pytest.mark.slow
def test_an_offline_record_copied_to_another_server_first_still_goes_to_its_own(
        record, tmp_path, servers):
    """The issue's third case: an offline record synced to server B first, then to its own
    server A."""
    a, b = servers
    folder = copy_record(record, tmp_path, a.url, "offline")
    events = journal(folder)
    copied = run_module("mnist_exp.sync", "--tracking-uri", b.url, "run", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr[-3000:]
    client, [copy] = runs_of(b.url, "offline")
    assert_holds(client, copy, events)
    assert f"kept until its own store {a.url} has it too" in said(copied, "copied ")
    assert (folder / "files").is_dir() and RunRecord(folder).pending == len(events)
    assert not runs_of(a.url, "offline")[1]

    synced = run_module("mnist_exp.sync", "run", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    client, [own] = runs_of(a.url, "offline")
    assert said(synced, "uploaded ") == f"uploaded run/{RECORD_DIR}: run {own.info.run_id} FINISHED"
    assert_holds(client, own, events)
    assert not (folder / "files").exists()
    again = run_module("mnist_exp.sync", "run", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to upload" in again.stdout
    assert len(runs_of(b.url, "offline")[1]) == 1


@pytest.mark.slow
def test_a_wrong_database_password_is_one_line_and_the_right_one_uploads(
        record, tmp_path, postgres):
    """The issue's second case: an offline record synced with a wrong database password,
    then with the right one."""
    right = postgres["uri"]
    password = right.split(":")[2].split("@")[0]
    folder = copy_record(record, tmp_path, right, "password")  # kept with *** for it
    assert password not in (folder / EVENTS).read_text()
    wrong = run_module("mnist_exp.sync", "--tracking-uri", right.replace(password, "wrong"),
                       "run", cwd=tmp_path)
    assert wrong.returncode == 2, wrong.stderr[-3000:]
    [line] = own_lines(wrong.stderr)
    assert line.startswith(f"mnist-exp: error: tracking store {redact(right)} refused the "
                           'credentials (password authentication failed for user "mlflow")')
    assert "wrong" not in line and "uploaded " not in wrong.stdout
    assert RunRecord(folder).uploaded == 0 and (folder / "files").is_dir()

    synced = run_module("mnist_exp.sync", "run", cwd=tmp_path,
                        env={"MLFLOW_TRACKING_URI": right})
    assert synced.returncode == 0, synced.stderr[-3000:]
    client, [run] = runs_of(right, "password")
    assert said(synced, "uploaded ") == f"uploaded run/{RECORD_DIR}: run {run.info.run_id} FINISHED"
    assert_holds(client, run, journal(folder))
