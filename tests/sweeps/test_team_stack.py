"""The team stack, run for real: `mlflow server` on PostgreSQL with S3 artifacts
(SeaweedFS), sweeps on a one-node SLURM cluster, on Ray and in 8 joblib processes, and the
one-line errors a user gets before any job starts. The services come from
scripts/services.py, started here once per session and stopped by pid even on failure;
where one cannot be installed (no root, no Debian packages) its tests skip, saying which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import psycopg2
import pytest

from helpers import ONE_EPOCH, ROOT, TINY, child_env, own_lines, run_module, serving, sweep_runs
from mnist_exp.data.load import load_idx_folder

sys.path.insert(0, str(ROOT / "scripts"))
import services  # scripts/ is not a package: found through sys.path

pytestmark = pytest.mark.slow  # the services start in ~30 s; the sweeps take ~4 min
SLURM_JOB = ("hydra/launcher=slurm", "hydra.launcher.partition=debug",
             "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1")


@pytest.fixture(scope="session")
def stack_folder():
    folder = Path(tempfile.mkdtemp(prefix="mnist-exp-stack-"))
    folder.chmod(0o711)  # user postgres must reach its data folder inside
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _service(name: str, folder: Path):
    """Start `name` for the session; skip (saying why) where it is not installed."""
    try:
        recorded = services.up(name, folder)
    except services.NotInstalled as e:
        pytest.skip(f"{name}: {e}")
    try:
        yield recorded
    finally:
        services.down(name, folder)


@pytest.fixture(scope="session")
def postgres(stack_folder):
    yield from _service("postgres", stack_folder)


@pytest.fixture(scope="session")
def s3(stack_folder):
    yield from _service("s3", stack_folder)


@pytest.fixture(scope="session")
def team_server(postgres, s3, stack_folder) -> str:
    """The team's tracking server: metadata in PostgreSQL, artifacts proxied to S3."""
    for recorded in _service("mlflow", stack_folder):
        yield recorded["url"]


@pytest.fixture(scope="session")
def slurm(stack_folder) -> dict:
    yield from _service("slurm", stack_folder)


def sweep(*args: str, cwd: Path, uri: str, slurm: dict | None = None,
          timeout: int = 600) -> subprocess.CompletedProcess:
    env = {"MLFLOW_TRACKING_URI": uri, **({"SLURM_CONF": slurm["conf"]} if slurm else {})}
    return run_module("mnist_exp.run", "-m", "tracking=team", "data=mnist_sample", *args,
                      "hydra.sweep.dir=sweep", cwd=cwd, env=env, timeout=timeout)


def slurm_jobs(slurm: dict) -> list[str]:
    squeue = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True,
                            env={**os.environ, "SLURM_CONF": slurm["conf"]}, check=True)
    return squeue.stdout.split("\n")[:-1]


def assert_logged_to_the_stack(uri: str, experiment: str, jobs: int, postgres: dict,
                               s3: dict):
    """`jobs` FINISHED runs under one FINISHED parent, read back through the server; their
    rows in PostgreSQL, their files in the S3 bucket."""
    client, [parent], children = sweep_runs(uri, experiment)
    assert parent.info.status == "FINISHED"
    assert len(children) == jobs and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    for run in children:
        assert 0 < run.data.metrics["test_accuracy"] <= 1
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
        assert "curves.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    with psycopg2.connect(f"postgresql://{postgres['server']}/mlflow") as db, db.cursor() as sql:
        sql.execute("SELECT count(*) FROM runs WHERE experiment_id = %s",
                    (int(parent.info.experiment_id),))
        assert sql.fetchone()[0] == jobs + 1
    keys = [o["Key"] for page in services.s3_client(s3).get_paginator("list_objects_v2")
            .paginate(Bucket=s3["bucket"]) for o in page.get("Contents", [])]
    for run in children:
        assert any(run.info.run_id in key and key.endswith("curves.png") for key in keys)
    return client, parent, children


def predicts_digits(uri: str, model_uri: str, mini: Path) -> float:
    """Download the model through the server and score it on 200 real test digits."""
    (_, _), (x_test, y_test) = load_idx_folder(mini)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(model_uri)
    guesses = np.asarray(model.predict(x_test[:200].astype(np.float32))).argmax(axis=1)
    return float((guesses == y_test[:200]).mean())


@pytest.fixture(scope="session")
def slurm_sweep(tmp_path_factory, team_server, slurm):
    """4 SLURM jobs logging to the PostgreSQL + S3 server, registering their models."""
    work = tmp_path_factory.mktemp("slurm_sweep")
    result = sweep(*SLURM_JOB, *TINY, "tracking.experiment_name=slurm",
                   "tracking.register_model=true", "tracking.keep_in_sweeps=all",
                   "optimizer.learning_rate=1e-3,3e-4",
                   "model.hidden_units=[64],[32]", cwd=work, uri=team_server, slurm=slurm)
    failures = [p.read_text() for p in (work / "sweep").glob("*/FAILED")]
    assert result.returncode == 0, (failures, result.stderr[-3000:])
    return result


def test_slurm_sweep_logs_and_registers_on_the_postgres_and_s3_server(
        slurm_sweep, team_server, postgres, s3, slurm, mini):
    client, parent, _ = assert_logged_to_the_stack(team_server, "slurm", 4, postgres, s3)
    # The registry in PostgreSQL: every job's version, the best job's the champion, whose
    # files come back from S3 through the server.
    assert len(client.search_model_versions("name = 'mnist-exp'")) == 4
    champion = client.get_model_version_by_alias("mnist-exp", "champion")
    assert champion.run_id == parent.data.tags["best_run_id"]
    assert predicts_digits(team_server, "models:/mnist-exp@champion", mini) > 0.3
    assert "Bypassing sacct error" not in slurm_sweep.stdout + slurm_sweep.stderr
    assert slurm_jobs(slurm) == []  # every job left the queue


def best_model(uri: str, run_id: str) -> str:
    [model] = mlflow.MlflowClient(uri).search_logged_models(
        filter_string=f"source_run_id = '{run_id}'",
        experiment_ids=[mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id])
    return model.model_id


def private_network() -> list[str]:
    """A command prefix that runs its command in a network namespace of its own, whose only
    interface is loopback; skip (saying why) where one cannot be made."""
    prefix = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    if not shutil.which("unshare") or not shutil.which("ip") or subprocess.run(
            [*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("Ray 2.60 listens on every interface, so its sweep runs only in a private "
                    "network namespace (`unshare --net`, which needs root and iproute2)")
    return prefix


def test_ray_sweep_in_a_private_network_logs_every_job(tmp_path, mini):
    # Ray's servers listen on all interfaces whatever its node address: in a namespace of
    # its own, all there is is loopback. A server outside it cannot be reached from inside,
    # so the store is a SQLite file (the SLURM and joblib tests cover the team server).
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [*private_network(), sys.executable, "-m", "mnist_exp.run", "-m", "hydra/launcher=ray",
         "data=mnist_sample", *TINY, "optimizer.learning_rate=1e-3,3e-4", f"tracking.uri={uri}",
         "hydra.sweep.dir=sweep"], cwd=tmp_path, env=child_env(), capture_output=True,
        text=True, timeout=600)
    failures = [p.read_text() for p in (tmp_path / "sweep").glob("*/FAILED")]
    assert result.returncode == 0, (failures, result.stderr[-3000:])
    client, [parent], children = sweep_runs(uri, "mnist_sample")
    assert parent.info.status == "FINISHED"
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.params["trainer.threads"] for r in children} == {"1"}  # Ray's num_cpus
    for run in children:
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
    model = best_model(uri, parent.data.tags["best_run_id"])
    assert predicts_digits(uri, f"models:/{model}", mini) > 0.3


def test_eight_parallel_joblib_jobs_all_reach_the_postgres_server(tmp_path, team_server):
    result = sweep("hydra/launcher=joblib", "hydra.launcher.n_jobs=8", *ONE_EPOCH,
                   "tracking.experiment_name=joblib8", "optimizer.learning_rate=1e-3,3e-4",
                   "model.hidden_units=[64],[32]", "trainer.batch_size=32,64", cwd=tmp_path,
                   uri=team_server)
    assert result.returncode == 0, result.stderr[-3000:]
    _, [parent], children = sweep_runs(team_server, "joblib8")
    assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}
    assert sorted(int(r.data.tags["sweep.job"]) for r in children) == list(range(8))
    assert parent.data.metrics["jobs"] == 8


# One line, exit 2, nothing left RUNNING, no job started.

def assert_one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = own_lines(result.stderr)
    assert line.startswith("mnist-exp: error: ") and all(w in line for w in words), line
    return line


def test_a_slurm_sweep_to_a_wrong_server_uri_stops_in_one_line(tmp_path, slurm):
    uri = f"http://127.0.0.1:{services.free_port()}"  # nothing listens there
    result = sweep(*SLURM_JOB, *ONE_EPOCH, "optimizer.learning_rate=1e-3,3e-4", cwd=tmp_path,
                   uri=uri, slurm=slurm)
    assert_one_line(result, uri, "does not answer")
    assert slurm_jobs(slurm) == [] and not (tmp_path / "sweep").exists()


def test_an_unknown_slurm_partition_stops_in_one_line(tmp_path, team_server, slurm):
    result = sweep(*SLURM_JOB, *ONE_EPOCH, "hydra.launcher.partition=gpu",
                   "tracking.experiment_name=partition", cwd=tmp_path, uri=team_server,
                   slurm=slurm)
    assert_one_line(result, "hydra.launcher.partition=gpu", "allowed: debug")
    assert slurm_jobs(slurm) == []
    assert mlflow.MlflowClient(team_server).get_experiment_by_name("partition") is None


def test_a_postgres_database_that_does_not_exist_is_one_line(tmp_path, postgres, s3):
    uri = f"postgresql+psycopg2://{postgres['server']}/nope"
    result = run_module("mnist_exp.run", f"tracking.uri={uri}", "data=mnist_sample",
                        *ONE_EPOCH, cwd=tmp_path)
    line = assert_one_line(result, 'database "nope" does not exist')
    assert postgres["server"].split("@")[0].split(":")[1] not in line  # the password
    with pytest.raises(services.ServiceError, match=r"database 'nope' .* does not exist"):
        services.check_backends(postgres, s3, "nope", s3["bucket"])


def test_an_s3_bucket_that_does_not_exist_stops_the_sweep_in_one_line(tmp_path, postgres, s3):
    """A server whose --artifacts-destination bucket is missing starts fine; the sweep
    must notice before its jobs train for nothing."""
    with pytest.raises(services.ServiceError, match="bucket 'nope' does not exist"):
        services.check_backends(postgres, s3, "mlflow", "nope")
    command = [sys.executable, "-m", "mlflow", "server", "--workers", "1",
               "--backend-store-uri", postgres["uri"], "--artifacts-destination", "s3://nope/x"]
    env = {**services.mlflow_env(s3), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with serving(command, ready="/health", cwd=tmp_path, env=env) as uri:
        result = sweep(*ONE_EPOCH, "tracking.experiment_name=nobucket",
                       "optimizer.learning_rate=1e-3,3e-4", cwd=tmp_path, uri=uri)
        assert_one_line(result, "s3://nope", "bucket does not exist")
        _, [parent], children = sweep_runs(uri, "nobucket")
    assert parent.info.status == "FAILED" and children == []
    assert not list((tmp_path / "sweep").glob("*/*.log"))  # no job started
