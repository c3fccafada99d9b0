"""What the tests share besides fixtures: the shipped data's place, tiny settings, and
running the commands as a user would (python -m ... in a folder of its own)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mnist_exp.cli.run import CONF_DIR
from mnist_exp.data.load import LOCAL_FOLDERS
from mnist_exp.tracking.record import RECORD_DIR

ROOT = Path(__file__).resolve().parents[1]
MINI = LOCAL_FOLDERS["mnist_sample"]  # 8,000 / 2,000 real digits, in the package

# A few hundred real digits and two epochs: enough to learn something, quick to run.
SECRET = "s3cr3t-t0ken-in-the-environment"
TINY = ("data.max_train_samples=600", "data.max_test_samples=300", "trainer.epochs=2")
# A sweep's jobs: one epoch, no model logged.
ONE_EPOCH = (*TINY[:2], "trainer.epochs=1", "tracking.log_model=false")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, as MNIST is published (uncompressed)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def compose_config(*overrides: str):
    """The real config, composed by Hydra as the entry point would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def options(group: str) -> list[str]:
    """The options of a config group: its YAML files under conf/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def child_env(env: dict | None = None) -> dict:
    """The environment a user's shell would give: no tracking URI or TensorFlow log level
    of ours, so the tests see the console a user sees."""
    drop = ("MLFLOW_TRACKING_URI", "TF_CPP_MIN_LOG_LEVEL")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **(env or {})}


def run_module(module: str, *args: str, cwd: Path, env: dict | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m module args...` in `cwd`, as a user would type it."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=child_env(env),
                          capture_output=True, text=True, timeout=timeout)


def offline_record(work: Path, *overrides: str) -> Path:
    """The record of a tiny run made offline in `work` (1 epoch, 300 digits, its model
    included, no system metrics), for tests of sync to copy and upload; `overrides` adds to
    the run's settings."""
    made = run_module("mnist_exp.run", "data=mnist_sample", "data.max_train_samples=300",
                      "data.max_test_samples=300", "trainer.epochs=1", "tracking.offline=true",
                      "tracking.system_metrics=false", f"tracking.uri=sqlite:///{work / 'x.db'}",
                      *overrides, "hydra.run.dir=run", cwd=work)
    assert made.returncode == 0, made.stderr[-3000:]
    return work / "run" / RECORD_DIR


def start_module(module: str, *args: str, cwd: Path,
                 stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """`python -m module args...` started in `cwd`, its output unbuffered and line by line,
    ready to take Ctrl-C as it would in a terminal: in a process group of its own (with any
    workers it starts), which `os.killpg(process.pid, SIGINT)` interrupts."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd,
                            env=child_env({"PYTHONUNBUFFERED": "1"}), stdout=subprocess.PIPE,
                            stderr=stderr, text=True, preexec_fn=_interruptible,
                            start_new_session=True)


def _interruptible() -> None:
    """Popen preexec_fn: the child takes Ctrl-C as it would in a terminal, even when the
    tests themselves run in the background (a shell's `&` makes its jobs ignore SIGINT,
    and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def own_lines(stderr: str) -> list[str]:
    """The lines of stderr, blank ones left out: what a user reads."""
    return [line for line in stderr.strip().splitlines() if line.strip()]


@contextmanager
def serving(command: list[str], *, ready: str, cwd: Path, env: dict | None = None,
            timeout: float = 180) -> Iterator[str]:
    """Start a server (`command` + --host/--port on a free local port), wait until GET
    `ready` answers, yield its base URL; stop it and its workers afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_DISABLE_TELEMETRY": "true",
                # MLflow starts `uvicorn` by name: the one beside this Python
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                **(env or {})}
    # stderr to a file, not a pipe: a chatty server would block once a pipe's buffer fills.
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=cwd, env=full_env, stdout=subprocess.DEVNULL, stderr=log,
                                  start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(url + ready, timeout=2).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        pytest.fail(f"{' '.join(command[:4])} did not start:\n"
                                    f"{log.read().decode(errors='replace')[-3000:]}")
                    time.sleep(0.5)
            yield url
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:  # a loaded machine's server may take long to go; the test is over
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait(timeout=30)


def sweep_runs(uri: str, experiment: str = "mnist"):
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("mnist_exp.sweep") == "parent"]
    children = [r for r in runs if r not in parents]
    return client, parents, children


def prepared(mini: Path, samples: int, epochs: int, *overrides: str):
    """A run's config, data and compiled model, as a run prepares them, on the first
    `samples` shipped digits (a fifth held out for validation): for tests of fit itself."""
    from mnist_exp.config.schema import parse_config
    from mnist_exp.data.load import load_dataset
    from mnist_exp.training.execution import prepare_model

    config = parse_config(compose_config(f"data.path={mini}", f"data.max_train_samples={samples}",
                                         f"trainer.epochs={epochs}", *overrides))
    data = load_dataset("mnist", str(mini), validation_split=0.2, seed=config.trainer.seed,
                        max_train_samples=samples)
    model, plan = prepare_model(config, data)
    return config, data, model, plan
