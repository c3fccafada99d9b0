"""Hydra callbacks a test adds to a sweep (+hydra.callbacks.<name>._target_=sweep_hooks....)
to change the world at the sweep's end, after its jobs and before mnist-exp's own callback
sums it up (Hydra calls on_multirun_end in the reverse order of hydra.callbacks)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class StopServer(Callback):
    """Stop the tracking server (its process group) once the jobs are done."""

    def __init__(self, pid: int, url: str) -> None:
        self.pid, self.url = pid, url

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1).close()
            except OSError:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.url} still answers")


class BreakParentArtifacts(Callback):
    """Put a file where the sweep's parent run keeps its artifacts (a local store), as a
    damaged disk or a full quota would leave it: the summary's upload fails unexpectedly."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        info = json.loads((Path(config.hydra.sweep.dir) / "mlflow_sweep.json").read_text())
        run = mlflow.MlflowClient(info["tracking_uri"]).get_run(info["parent_run_id"])
        folder = Path(run.info.artifact_uri.removeprefix("file://"))
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_text("not a folder")


class KillOnceRunExists(Callback):
    """SIGKILL the sweep's own process (as `kill -9` or the OOM killer would end it) once
    job `job`'s MLflow run exists: a thread of the job's process waits for the run's id in
    its local record. With the basic launcher the job runs in the sweep's process."""

    def __init__(self, job: int) -> None:
        self.job = job

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.job.num != self.job:
            return
        ids = Path(config.hydra.runtime.output_dir) / "mlflow_record" / "ids.json"

        def kill_when_started() -> None:
            while not ids.is_file():
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_when_started, daemon=True).start()
