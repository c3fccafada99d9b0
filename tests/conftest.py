"""Shared fixtures: the real config, the real digits shipped with the package, one real
tiny run, a real PostgreSQL server for the tests that ask for one. Nothing here reads
outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest

from helpers import MINI, ROOT, SECRET, TINY, run_module, write_idx
from mnist_exp.data.load import load_idx_folder

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


@pytest.fixture(scope="session")
def postgres() -> Iterator[dict]:
    """A real PostgreSQL server (scripts/services.py) for the session's tests that need one,
    each in a database of its own; stopped by pid even on failure, skipped where PostgreSQL
    is not installed. test_team_stack.py has its own, in one folder with its S3 and mlflow
    server."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    import services  # scripts/ is not a package

    folder = Path(tempfile.mkdtemp(prefix="mnist-exp-postgres-"))
    folder.chmod(0o711)  # user postgres must reach its data folder inside
    try:
        try:
            recorded = services.up("postgres", folder)
        except services.NotInstalled as e:
            pytest.skip(f"postgres: {e}")
        yield recorded
    finally:
        services.down("postgres", folder)  # nothing to stop where it did not start
        shutil.rmtree(folder, ignore_errors=True)
