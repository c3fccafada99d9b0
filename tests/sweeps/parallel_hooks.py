"""A Hydra callback a test adds to a search (+hydra.callbacks.<name>._target_=
parallel_hooks.RecordJobs, with tests/sweeps on PYTHONPATH) to see how its workers spent
their time: each job's start and end, and the process that ran it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SPANS = "job_spans"  # <sweep dir>/job_spans/<job number>.json


class RecordJobs(Callback):
    """Record every job's start and end in <sweep dir>/job_spans/<num>.json. Job `hold`
    does not end until job `until` has started (at most `timeout` seconds): a trial
    that runs long, without depending on how fast this machine is today."""

    def __init__(self, hold: int = -1, until: int = -1, timeout: float = 120) -> None:
        self.hold, self.until, self.timeout = hold, until, timeout

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._write(config, started=time.time(), pid=os.getpid())

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.job.num == self.hold:
            deadline = time.monotonic() + self.timeout
            awaited = _folder(config) / f"{self.until}.json"
            while not awaited.is_file() and time.monotonic() < deadline:
                time.sleep(0.05)
        self._write(config, ended=time.time())

    def _write(self, config: DictConfig, **values: Any) -> None:
        path = _folder(config) / f"{config.hydra.job.num}.json"
        span = json.loads(path.read_text()) if path.is_file() else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps({**span, **values}))
        partial.replace(path)  # whole, never half written, for the job that waits on it


def _folder(config: DictConfig) -> Path:
    return Path(config.hydra.sweep.dir) / SPANS
