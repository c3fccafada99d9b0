"""A sweep's end never hides a failure: a summary that cannot reach its server is kept for
`python -m mnist_exp.sync` (exit 3), an unexpected error in it is one line and exit 1;
never a warning and exit 0. The world is changed between the jobs and the summary by a
Hydra callback of the test's (sweep_hooks.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from helpers import ONE_EPOCH, own_lines, run_module, sweep_runs

HOOKS = {"PYTHONPATH": str(Path(__file__).parent)}


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on `port` with its SQLite store and artifacts in `folder` (the same
    port again, as a server that comes back keeps its address)."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return server
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)


@pytest.mark.slow
def test_a_summary_whose_server_went_away_is_kept_for_sync(mini, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    try:
        swept = run_module("mnist_exp.run", "-m", f"tracking.uri={url}", f"data.path={mini}",
                           *ONE_EPOCH, "optimizer.learning_rate=1e-3,3e-4",
                           "hydra.sweep.dir=sweep",
                           "+hydra.callbacks.stop_server._target_=sweep_hooks.StopServer",
                           f"+hydra.callbacks.stop_server.pid={server.pid}",
                           f"+hydra.callbacks.stop_server.url={url}", cwd=tmp_path, env=HOOKS)
        assert swept.returncode == 3, swept.stderr[-3000:]
        assert own_lines(swept.stderr)[-1] == (
            f"mnist-exp: error: tracking server {url} not answering; the sweep's runs and "
            "summary are kept in sweep; upload it with: python -m mnist_exp.sync sweep")
        assert (tmp_path / "sweep" / "SUMMARY_PENDING").is_file()
        assert "Callback" not in swept.stderr  # no warning of Hydra's about our callback

        server = start_server(tmp_path, port)
        synced = run_module("mnist_exp.sync", "sweep", cwd=tmp_path)
        assert synced.returncode == 0, synced.stderr[-3000:]
        _, [parent], children = sweep_runs(url)
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["failed_jobs"] == 0
        assert parent.data.tags["best_run_id"] in {r.info.run_id for r in children}
        assert "best_final_val_accuracy" in parent.data.metrics
        assert not (tmp_path / "sweep" / "SUMMARY_PENDING").exists()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


@pytest.mark.slow
def test_an_unexpected_error_in_the_summary_ends_the_sweep_in_one_line(tmp_path):
    """A job that fails fast (its batch is larger than its data) and a summary whose
    artifact folder is a file: exit 1 naming the error and the log with its traceback."""
    swept = run_module("mnist_exp.run", "-m", "data=mnist_sample", "trainer.batch_size=100000",
                       "hydra.sweep.dir=sweep",
                       "+hydra.callbacks.break_store._target_=sweep_hooks.BreakParentArtifacts",
                       cwd=tmp_path, env=HOOKS)
    log = tmp_path / "sweep" / "sweep.log"
    assert swept.returncode == 1, swept.stderr[-3000:]
    line = own_lines(swept.stderr)[-1]
    assert line.startswith("mnist-exp: error: ") and "unexpected" in line, line
    assert f"the traceback is in {log.relative_to(tmp_path)}" in line
    assert "Traceback" in log.read_text()
    assert "Callback" not in swept.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [parent] = client.search_runs([client.get_experiment_by_name("mnist_sample").experiment_id],
                                  "tags.`mnist_exp.sweep` = 'parent'")
    assert parent.info.status == "FAILED"
