"""SLURM's stops, on a real one-node cluster (scripts/service_slurm.py, accounting off):
scancel, a time limit and a preemption end a sweep job's run KILLED with its reason, after
the step under way; the sweep says the job was stopped, never ranks it, ranks the others
and exits 143; a job killed outright does not hold the sweep up (squeue tells it ended);
and a sweep stops waiting on a job SLURM says nothing about after lost_after_min.

The cluster and an `mlflow server` (SQLite) are started once for the module and stopped by
pid; without root or Debian's slurm-wlm and munge, the cluster's tests skip, saying why.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from helpers import ROOT, child_env, own_lines, serving, sweep_runs

sys.path.insert(0, str(ROOT / "scripts"))
import service_slurm  # scripts/ is not a package: found through sys.path
from service_procs import NotInstalled

slow = pytest.mark.slow  # each sweep waits for SLURM and a job's TensorFlow: about a minute
LONG = "trainer.epochs=100000"  # a job that trains until it is stopped
JOB = ("hydra/launcher=slurm", "hydra.launcher.partition=debug",
       "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
       "data.max_train_samples=600", "data.max_test_samples=300", "tracking.log_model=false")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    folder.chmod(0o711)
    try:  # `urgent` jobs preempt `debug` ones; 30 s from SIGTERM to SIGKILL, as by default
        recorded = service_slurm.up(folder, kill_wait=30, preempting="urgent")
    except NotInstalled as e:
        pytest.skip(f"slurm: {e}")
    try:
        yield recorded
    finally:
        service_slurm.down(recorded)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("mlflow")
    command = [sys.executable, "-m", "mlflow", "server", "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    with serving(command, ready="/health", cwd=folder,
                 env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}) as url:
        yield url


def slurm_cmd(slurm: dict, *command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True,
                          env={**os.environ, "SLURM_CONF": slurm["conf"]}).stdout


@pytest.fixture
def sweep(tmp_path, slurm, server):
    """Start a SLURM sweep in tmp_path (in the background); stop it, and the jobs it left
    in the queue, at the end of the test."""
    started = []

    def start(*args: str) -> subprocess.Popen:
        env = child_env({"MLFLOW_TRACKING_URI": server, "SLURM_CONF": slurm["conf"]})
        with (tmp_path / "out.txt").open("w") as out, (tmp_path / "err.txt").open("w") as err:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "mnist_exp.run", "-m", "tracking=team",
                 "data=mnist_sample", *JOB, *args, "hydra.sweep.dir=sweep"],
                cwd=tmp_path, env=env, stdout=out, stderr=err, start_new_session=True))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    slurm_cmd(slurm, "scancel", "--user", "root")  # the old code's jobs outlive their sweep
    deadline = time.monotonic() + 90
    while slurm_cmd(slurm, "squeue", "-h") and time.monotonic() < deadline:
        time.sleep(1)


def ended(process: subprocess.Popen, folder: Path, timeout: float = 240) -> list[str]:
    """The sweep's stderr lines once it ended; a failure if it still waits after `timeout`."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the sweep still runs after {timeout} s (waiting on SLURM?):\n"
                    + (folder / "out.txt").read_text()[-2000:])
    return own_lines((folder / "err.txt").read_text())


def training(folder: Path, job: int, timeout: float = 180) -> str:
    """SLURM's id of sweep job `job` once it has started to train (its first epoch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in (folder / "sweep" / ".submitit").glob("*/*_log.out"):
            task = log.parent.name  # 12 for a one-job sweep, 12_3 for job 3 of an array
            if task.split("_")[-1] in (str(job), task) and "Epoch 1/" in log.read_text():
                return task
        time.sleep(1)
    pytest.fail(f"job {job} did not start training within {timeout} s")


def runs_of(server: str, experiment: str):
    """The sweep's parent, and its jobs' runs by their number of epochs."""
    client, [parent], children = sweep_runs(server, experiment)
    return client, parent, {r.data.params["trainer.epochs"]: r for r in children}


def assert_stopped(lines: list[str], job: int, reason: str, returncode: int | None) -> None:
    assert returncode == 143, lines[-10:]
    assert lines[-1].startswith("mnist-exp: error: 1 job(s) stopped by the cluster; "
                                f"job {job}: "), lines[-1]
    assert reason in lines[-1]


def assert_long_job_killed(process: subprocess.Popen, folder: Path, server: str,
                           experiment: str, reason: str) -> None:
    """A sweep of one LONG job, stopped by SLURM for `reason`: the sweep says so and exits
    143, the job's run is KILLED with that stop_reason."""
    assert_stopped(ended(process, folder), 0, f"({reason})", process.returncode)
    _, _, jobs = runs_of(server, experiment)
    assert jobs[LONG[15:]].info.status == "KILLED"
    assert jobs[LONG[15:]].data.tags["stop_reason"] == reason


@slow
def test_scancel_ends_the_run_killed_and_the_sweep_ranks_only_the_others(tmp_path, sweep,
                                                                          slurm, server):
    process = sweep("tracking.experiment_name=scancel", f"trainer.epochs=2,{LONG[15:]}")
    slurm_cmd(slurm, "scancel", training(tmp_path, 1))
    lines = ended(process, tmp_path)
    assert_stopped(lines, 1, "(cancelled); its MLflow run is KILLED", process.returncode)
    assert (tmp_path / "sweep" / "1" / "STOPPED").is_file()
    client, parent, jobs = runs_of(server, "scancel")
    stopped, finished = jobs[LONG[15:]], jobs["2"]
    assert stopped.info.status == "KILLED" and stopped.data.tags["stop_reason"] == "cancelled"
    assert finished.info.status == "FINISHED"
    assert parent.data.tags["best_run_id"] == finished.info.run_id
    ranking = Path(client.download_artifacts(parent.info.run_id, "sweep_ranking.md",
                                             str(tmp_path))).read_text()
    assert f"| 1 | {finished.info.run_id[:8]} |" in ranking
    assert f"| - | {stopped.info.run_id[:8]} |" in ranking  # listed, never ranked
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").glob("*_1/*_log.*"))
    assert "Bypassing signal SIGTERM" not in logs  # submitit's handler did not take it


@slow
def test_a_job_at_its_time_limit_ends_its_run_killed(tmp_path, sweep, server):
    # signal_delay_s=0: the stop is SLURM's SIGTERM at the limit (with the default 120 s,
    # submitit's USR2 comes first, which stop_reason also names a time limit).
    process = sweep("tracking.experiment_name=timelimit", "hydra.launcher.timeout_min=1",
                    "hydra.launcher.signal_delay_s=0", LONG)
    assert_long_job_killed(process, tmp_path, server, "timelimit", "time limit")


@slow
def test_a_preempted_job_ends_its_run_killed(tmp_path, sweep, slurm, server):
    process = sweep("tracking.experiment_name=preempted", LONG)
    training(tmp_path, 0)
    cores = slurm_cmd(slurm, "sinfo", "-h", "-o", "%c").strip()
    slurm_cmd(slurm, "sbatch", "-p", "urgent", "-c", cores, "-o", "/dev/null", "--wrap", "true")
    assert_long_job_killed(process, tmp_path, server, "preempted", "preempted")


@slow
def test_a_job_killed_outright_without_accounting_does_not_hold_the_sweep(tmp_path, sweep,
                                                                          slurm, server):
    assert "accounting_storage/none" in slurm_cmd(slurm, "scontrol", "show", "config")
    process = sweep("tracking.experiment_name=killed", f"trainer.epochs=2,{LONG[15:]}")
    task = training(tmp_path, 1)
    job_id = slurm_cmd(slurm, "squeue", "-h", "-j", task, "-o", "%A").strip()
    for line in slurm_cmd(slurm, "scontrol", "listpids", job_id).splitlines()[1:]:
        pid, _, step, *_ = line.split()
        if step == "0":  # the job's Python, as the OOM killer would end it: no handler runs
            os.kill(int(pid), signal.SIGKILL)
    lines = ended(process, tmp_path)
    assert_stopped(lines, 1, f"SLURM job {task} ended (FAILED) without a result",
                   process.returncode)
    _, parent, jobs = runs_of(server, "killed")
    assert jobs[LONG[15:]].info.status == "KILLED"  # ended from its record, not left RUNNING
    assert jobs[LONG[15:]].data.tags["stop_reason"] == "killed: SLURM state FAILED"
    assert parent.data.tags["best_run_id"] == jobs["2"].info.run_id


def test_a_sweep_stops_waiting_on_a_job_slurm_says_nothing_about(tmp_path, monkeypatch,
                                                                 caplog):
    """squeue and sacct, both real, asking a controller that is not there."""
    if not all(map(shutil.which, ("squeue", "sacct"))):
        pytest.skip("SLURM's squeue and sacct are not installed (apt-get install slurm-wlm)")
    from mnist_exp.sweeps.slurm_state import LOST, SlurmWatcher

    conf = tmp_path / "slurm.conf"  # nothing listens on port 1; MessageTimeout: no retries
    conf.write_text("ClusterName=gone\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=1\n"
                    "MessageTimeout=1\nNodeName=localhost CPUs=1\n"
                    "PartitionName=debug Nodes=localhost\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    watcher = SlurmWatcher(lost_after_s=1)
    watcher.register_job("12_0")
    assert not watcher.is_done("12_0", mode="force")  # SLURM did not answer: still waiting
    time.sleep(1.1)
    with caplog.at_level(logging.WARNING):
        assert watcher.is_done("12_0", mode="force")
    assert watcher.get_state("12_0", mode="cache") == LOST
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "job(s) 12_0" in warning and "hydra.launcher.lost_after_min" in warning


@pytest.mark.parametrize(("number", "fields", "reason"), [
    (signal.SIGTERM, {"JobState": "COMPLETING", "Reason": "None"}, "cancelled"),
    (signal.SIGTERM, {"JobState": "COMPLETING", "Reason": "TimeLimit"}, "time limit"),
    (signal.SIGTERM, {"JobState": "COMPLETING", "Reason": "None",
                      "PreemptTime": "2026-12-02T10:49:07"}, "preempted"),
    (signal.SIGTERM, {"JobState": "COMPLETING", "Reason": "None", "PreemptTime": "None"},
     "cancelled"),
    (signal.SIGUSR2, {"JobState": "RUNNING", "EndTime": "+100"}, "time limit"),
    (signal.SIGUSR2, {"JobState": "RUNNING", "EndTime": "+3600"}, "preempted"),
    (signal.SIGTERM, {}, "SIGTERM while its state was unknown"),
])
def test_why_slurm_stopped_a_job_is_read_from_its_record(number, fields, reason):
    """The fields are scontrol's, as the cluster showed them for each kind of stop."""
    from mnist_exp.sweeps.cluster import stop_reason

    now = datetime(2026, 12, 2, 10, 0)
    if "EndTime" in fields:  # submitit's USR2: signal_delay_s=120 before the limit
        fields = {**fields, "EndTime": (now + timedelta(seconds=int(fields["EndTime"])))
                  .isoformat(timespec="seconds")}
    assert stop_reason(number, fields, 120, now=now) == reason


def test_slurm_s_repeated_sigterm_waits_for_the_step_too(monkeypatch):
    """In a SLURM job, SIGTERM waits for the end of the step even when it comes twice, as it
    does at a time limit (a second Ctrl-C stops at once; SLURM kills the job itself after
    KillWait), then stops the job; one more, while the run ends, is let be."""
    from mnist_exp.sweeps.cluster import JobStopped, take_slurm_signals
    from mnist_exp.training.interrupts import DeferredInterrupts

    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("PATH", "")  # no scontrol to ask: the reason is the signal's
    kept = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGUSR2, signal.SIGCONT)}
    stepped = False
    try:
        assert take_slurm_signals(120)
        with pytest.raises(JobStopped, match="SIGTERM"), DeferredInterrupts() as interrupts:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # Ctrl-C's handler would raise here
            time.sleep(0.1)
            stepped = True  # the step under way ends
            interrupts.deliver()
        assert stepped
        os.kill(os.getpid(), signal.SIGTERM)  # during the run's end: let be
        time.sleep(0.1)
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)
