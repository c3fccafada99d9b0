"""Shared fixtures: the real config, real data from ../shared, one real tiny run."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mnist_exp.run import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
MINI = DATASETS / "mnist-mini"
T10K = DATASETS / "mnist-t10k"

# A few hundred real digits and two epochs: enough to learn something, quick to run.
SECRET = "s3cr3t-t0ken-in-the-environment"
TINY = ("data.max_train_samples=600", "data.max_test_samples=300", "trainer.epochs=2")


def needs(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"{folder} is not here (the shared datasets sit beside the checkout)")
    return folder


@pytest.fixture(scope="session")
def mini() -> Path:
    return needs(MINI)


@pytest.fixture(scope="session")
def t10k() -> Path:
    return needs(T10K)


def compose_config(*overrides: str):
    """The real config, composed by Hydra as the entry point would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def options(group: str) -> list[str]:
    """The options of a config group: its YAML files under conf/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _child_env(env: dict | None = None) -> dict:
    return {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
            "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}


def run_module(module: str, *args: str, cwd: Path, env: dict | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m module args...` in `cwd`, as a user would type it."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=_child_env(env),
                          capture_output=True, text=True, timeout=timeout)


def start_module(module: str, *args: str, cwd: Path,
                 stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """`python -m module args...` started in `cwd`, its output unbuffered and line by line,
    ready to take Ctrl-C as it would in a terminal: in a process group of its own (with any
    workers it starts), which `os.killpg(process.pid, SIGINT)` interrupts."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd,
                            env=_child_env({"PYTHONUNBUFFERED": "1"}), stdout=subprocess.PIPE,
                            stderr=stderr, text=True, preexec_fn=_interruptible,
                            start_new_session=True)


_NATIVE_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl"
                         r"|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow)")


def _interruptible() -> None:
    """Popen preexec_fn: the child takes Ctrl-C as it would in a terminal, even when the
    tests themselves run in the background (a shell's `&` makes its jobs ignore SIGINT,
    and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def own_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's native start-up log (which no setting silences) and
    MLflow's INFO notes (e.g. that it created the database)."""
    return [line for line in stderr.strip().splitlines() if not _NATIVE_LOG.match(line)]


@dataclass(frozen=True)
class TinyRun:
    workdir: Path
    tracking_uri: str
    process: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mini) -> TinyRun:
    """The whole runner, end to end, into a temporary tracking store (default layout:
    mlflow.db and mlruns/ in the launch folder)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    process = run_module("mnist_exp.run", f"data.path={mini}", *TINY,
                         "hydra.run.dir=hydra_out", cwd=workdir,
                         env={"MNIST_EXP_TEST_SECRET": SECRET})
    assert process.returncode == 0, process.stderr[-3000:]
    return TinyRun(workdir, f"sqlite:///{workdir / 'mlflow.db'}", process)


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
                server.wait(timeout=30)
