"""Shared fixtures: the real config, the real digits shipped with the package, one real
tiny run. Nothing here reads outside the checkout."""

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
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mnist_exp.data import LOCAL_FOLDERS, load_idx_folder
from mnist_exp.run import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
MINI = LOCAL_FOLDERS["mnist_sample"]  # 8,000 / 2,000 real digits, in the package

# A few hundred real digits and two epochs: enough to learn something, quick to run.
SECRET = "s3cr3t-t0ken-in-the-environment"
TINY = ("data.max_train_samples=600", "data.max_test_samples=300", "trainer.epochs=2")
# The tiny run's own tags and note; system metrics sampled every second, so a run of a few
# seconds records some.
TINY_RUN_TRACKING = ("+tracking.tags.team=vision", "tracking.description=A tiny smoke run",
                     "tracking.system_metrics_interval=1.0")


@pytest.fixture(scope="session", autouse=True)
def compile_cache_of_the_session(tmp_path_factory) -> Iterator[None]:
    """XLA's compilation cache (trainer.compile_cache) in a folder of the test session's,
    not the user's ~/.cache; shared by the session's runs, as a user's runs share theirs."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def mini() -> Path:
    return MINI


@pytest.fixture(scope="session")
def t10k(tmp_path_factory) -> Path:
    """The official MNIST test files, uncompressed, rebuilt from the shipped sample (their
    10,000 images in the order numpy.random.default_rng(0).permutation(10000), split
    8,000 / 2,000), so the published checksums can be checked without shipping them twice."""
    folder = tmp_path_factory.mktemp("t10k")
    (x_train, y_train), (x_test, y_test) = load_idx_folder(MINI)
    order = np.random.default_rng(0).permutation(10000)
    for stem, parts in [("t10k-images-idx3-ubyte", (x_train, x_test)),
                        ("t10k-labels-idx1-ubyte", (y_train, y_test))]:
        official = np.empty_like(np.concatenate(parts))
        official[order] = np.concatenate(parts)
        write_idx(folder / stem, official)
    return folder


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


def _child_env(env: dict | None = None) -> dict:
    """The environment a user's shell would give: no tracking URI or TensorFlow log level
    of ours, so the tests see the console a user sees."""
    drop = ("MLFLOW_TRACKING_URI", "TF_CPP_MIN_LOG_LEVEL")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **(env or {})}


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


def _interruptible() -> None:
    """Popen preexec_fn: the child takes Ctrl-C as it would in a terminal, even when the
    tests themselves run in the background (a shell's `&` makes its jobs ignore SIGINT,
    and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def own_lines(stderr: str) -> list[str]:
    """The lines of stderr, blank ones left out: what a user reads."""
    return [line for line in stderr.strip().splitlines() if line.strip()]


@dataclass(frozen=True)
class TinyRun:
    workdir: Path
    tracking_uri: str
    process: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mini) -> TinyRun:
    """The whole runner, end to end, on the shipped digits (data=mnist_sample, experiment
    mnist_sample), into a temporary tracking store (default layout: mlflow.db and mlruns/
    in the launch folder)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    process = run_module("mnist_exp.run", "data=mnist_sample", *TINY, *TINY_RUN_TRACKING,
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


@pytest.fixture(scope="module")
def client(tiny_run):
    """A client of the tiny run's store, which is also MLflow's current one."""
    mlflow.set_tracking_uri(tiny_run.tracking_uri)
    return mlflow.MlflowClient(tiny_run.tracking_uri)


@pytest.fixture(scope="module")
def run(client):
    """The tiny run, read back from its store (the only run of its experiment)."""
    experiment = client.get_experiment_by_name("mnist_sample")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]
