"""A sweep killed outright (SIGKILL: no handler runs) leaves nothing RUNNING once it is
resumed or synced: its parent run and the job run it had open end KILLED, tagged
mnist_exp.ended_by, and an Optuna search's interrupted trial is told FAIL. A sweep's
process holds a lock on <sweep dir>/sweep.lock for its life, so a dead one is told from a
live one by the lock alone; one from before there were locks is ended only when the user
says it has died (sync --dead-sweeps). The searches and sweeps run for
real; the kill comes from a Hydra callback of the test's (sweep_hooks.KillOnceRunExists),
once the job's MLflow run exists."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from helpers import ONE_EPOCH, child_env, run_module, sweep_runs
from mnist_exp.errors import UserError
from mnist_exp.sweeps import sweep_lock
from mnist_exp.sweeps.liveness import ENDED_BY, end_dead_sweeps
from mnist_exp.sweeps.parent import PARENT_DIR
from mnist_exp.sweeps.study import PRUNED_ATTR
from mnist_exp.sweeps.sweep_lock import hold_sweep, locks_shared
from mnist_exp.tracking.record import RunRecord
from mnist_exp.tracking.store import SweepInfo, claim_sweep_dir, prepare_experiment
from mnist_exp.tracking.tracker import Tracker
from mnist_exp.tracking.upload import KEPT_OPEN, upload_folder

HOOKS = {"PYTHONPATH": str(Path(__file__).parent)}
SEARCH = ("-m", "hparams_search=optuna", "data=mnist_sample", "data.max_train_samples=300",
          "data.max_test_samples=200", "trainer.epochs=2", "tracking.log_model=false",
          "trainer.batch_size=choice(32,64,128)",  # 240 training samples: no batch of 256
          "hydra.sweeper.n_trials=4")


def killed_at(job: int, *args: str, cwd: Path) -> str:
    """Run `python -m mnist_exp.run args...` until its process is killed outright once job
    `job`'s run exists; its output. Only that process is killed: a helper process it had
    started may outlive it, so the output goes to files (an orphan holding a pipe would
    keep the test waiting), and its session is ended afterwards."""
    out = cwd / "killed.log"
    with out.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mnist_exp.run", *args,
             "+hydra.callbacks.kill._target_=sweep_hooks.KillOnceRunExists",
             f"+hydra.callbacks.kill.job={job}"],
            cwd=cwd, env=child_env(HOOKS), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            process.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, out.read_text()[-3000:]
    return out.read_text()


def holder(sweep_dir: Path) -> subprocess.Popen:
    """A process that holds the sweep's lock, as a sweep's process does, until killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from mnist_exp.sweeps.sweep_lock import hold_sweep; hold_sweep(Path(sys.argv[1])); "
         "print('held', flush=True); time.sleep(600)", str(sweep_dir)],
        env=child_env(), stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def open_sweep(tmp_path: Path, jobs: int = 2) -> tuple[mlflow.MlflowClient, str, str,
                                                       list[Tracker]]:
    """A sweep folder whose parent run and `jobs` job runs were started and never ended,
    with no sweep.lock (as one made before there were locks): the store's client, the
    parent's id, a RUNNING job run with no record here, and the jobs' trackers."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = prepare_experiment(uri, "e")
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(experiment, tags={"mnist_exp.sweep": "parent"}).info.run_id
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    SweepInfo(uri, experiment, parent, "s").save(sweep)
    nested = {"mlflow.parentRunId": parent}
    loose = client.create_run(experiment, tags=nested).info.run_id  # no record of its own
    trackers = [Tracker(RunRecord.create(sweep / str(job) / "mlflow_record"), uri)
                for job in range(jobs)]
    for job, tracker in enumerate(trackers):  # each job's run started, never ended
        tracker.emit("start", experiment_id=experiment, experiment_name="e",
                     run_name=f"job {job}", tags=nested, start_time=int(time.time() * 1000),
                     tracking_uri=uri)
    return client, parent, loose, trackers


def test_a_dead_sweeps_open_runs_end_killed_and_a_live_ones_are_left(tmp_path, caplog):
    client, parent, loose, trackers = open_sweep(tmp_path)
    sweep = tmp_path / "sweep"
    trackers[1].record.hold()  # job 1 still runs (a SLURM job outliving its sweep)
    assert end_dead_sweeps([tmp_path]) == []  # no lock file (made before there was one)
    assert client.get_run(parent).info.status == "RUNNING"  # alive or dead: not told
    assert f"python -m mnist_exp.sync --dead-sweeps {sweep} ends" in caplog.text  # but named
    sweeper = holder(sweep)
    assert end_dead_sweeps([tmp_path]) == []  # its sweep lives
    with pytest.raises(UserError, match=r"running now \(pid"):
        hold_sweep(sweep)  # a resume of it is refused
    sweeper.send_signal(signal.SIGKILL)
    sweeper.wait()

    gone = tmp_path / "gone"  # a dead sweep whose parent run the store does not hold
    gone.mkdir()
    SweepInfo(f"sqlite:///{tmp_path / 'mlflow.db'}", client.get_run(parent).info.experiment_id,
              "0" * 32, "g").save(gone)
    (gone / sweep_lock.LOCK).write_text(f"pid 1 on {socket.gethostname()}\n")
    [line] = end_dead_sweeps([tmp_path])  # the other sweep's runs are still ended
    assert f"{gone}: could not end the runs its dead sweep left open" in caplog.text
    assert line == (f"{sweep}: the sweep's process had died; ended KILLED ({ENDED_BY}=sync): "
                    f"its parent run {parent} and 2 job run(s)")
    assert upload_folder(sweep) == []  # job 0's record, ended KILLED
    status = {run: client.get_run(run) for run in
              (parent, loose, trackers[0].run_id, trackers[1].run_id)}
    assert [r.info.status for r in status.values()] == ["KILLED"] * 3 + ["RUNNING"]
    assert [r.data.tags.get(ENDED_BY) for r in status.values()] == ["sync"] * 3 + [None]
    assert end_dead_sweeps([tmp_path]) == []  # nothing left open: said once
    trackers[1].record.let_go()


def test_a_job_killed_before_its_record_heard_its_runs_id_is_one_run_ended_once(tmp_path):
    """Killed after the store made the job's run but before its record noted the id: the
    store's RUNNING run is the record's, filled in and ended by its upload, not a second
    run counted, ended apart, and doubled by the record's upload."""
    client, parent, loose, _ = open_sweep(tmp_path, jobs=0)
    sweep = tmp_path / "sweep"
    experiment = client.get_run(parent).info.experiment_id
    nested, start = {"mlflow.parentRunId": parent}, int(time.time() * 1000)
    record = RunRecord.create(sweep / "0" / "mlflow_record")
    record.append("start", experiment_id=experiment, experiment_name="e", run_name="job 0",
                  tags=nested, start_time=start)
    unheard = client.create_run(experiment, start_time=start, tags=nested,
                                run_name="job 0").info.run_id
    (sweep / sweep_lock.LOCK).write_text(f"pid 1 on {socket.gethostname()}\n")

    [line] = end_dead_sweeps([sweep])
    assert line.endswith(f"its parent run {parent} and 2 job run(s)")  # loose and job 0
    assert upload_folder(sweep) == []
    jobs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.info.run_id for r in jobs) == sorted([loose, unheard])
    assert [(r.info.status, r.data.tags[ENDED_BY]) for r in jobs] == [("KILLED", "sync")] * 2
    assert record.ids["run_id"] == unheard


def unborn_sweep(tmp_path: Path) -> tuple[mlflow.MlflowClient, str, Path]:
    """A sweep killed as it began: the store made its parent run (the record's start is
    there, its id not yet), its folder is claimed but names no run, and no job ran. The
    store's client, that run's id, and the folder."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = prepare_experiment(uri, "mnist_sample")
    client, sweep = mlflow.MlflowClient(uri), tmp_path / "sweep"
    assert claim_sweep_dir(sweep)
    (sweep / sweep_lock.LOCK).write_text(f"pid 1 on {socket.gethostname()}\n")
    record = RunRecord.create(sweep / PARENT_DIR / "mlflow_record")
    (record.folder / KEPT_OPEN).touch()
    start, tags = int(time.time() * 1000), {"mnist_exp.sweep": "parent"}
    record.append("start", experiment_id=experiment, experiment_name="mnist_sample",
                  run_name="sweep s", tags=tags, start_time=start)
    parent = client.create_run(experiment, start_time=start, tags=tags,
                               run_name="sweep s").info.run_id
    return client, parent, sweep


def test_a_sweep_killed_as_it_began_has_its_parent_ended_by_sync_and_its_folder_freed(
        tmp_path):
    client, parent, sweep = unborn_sweep(tmp_path)
    synced = run_module("mnist_exp.sync", "sweep", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert synced.stdout.splitlines()[0] == (
        f"sweep: the sweep's process had died as it began, before any job; ended KILLED "
        f"({ENDED_BY}=sync): its parent run")
    [run] = client.search_runs([client.get_run(parent).info.experiment_id])
    assert (run.info.run_id, run.info.status, run.data.tags[ENDED_BY]) == (
        parent, "KILLED", "sync")
    assert not (sweep / "mlflow_sweep.json").exists()  # the same sweep may start there
    assert "KILLED" not in run_module("mnist_exp.sync", "sweep", cwd=tmp_path).stdout


@pytest.mark.slow
def test_a_sweep_killed_as_it_began_starts_afresh_when_resumed(tmp_path):
    _, parent, _ = unborn_sweep(tmp_path)
    again = run_module("mnist_exp.run", "-m", "data=mnist_sample", *ONE_EPOCH,
                       "hydra.sweep.dir=sweep", "hydra.callbacks.mlflow_sweep.resume=true",
                       cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    _, parents, [job] = _runs(tmp_path)
    assert sorted((p.info.run_id == parent, p.info.status, p.data.tags.get(ENDED_BY))
                  for p in parents) == [(False, "FINISHED", None), (True, "KILLED", "resume")]
    assert job.info.status == "FINISHED"


def test_a_dead_searchs_trials_are_told_fail_but_one_whose_job_still_runs(tmp_path):
    """The trials come from the jobs' Hydra settings, as each job found its study; a job
    whose record a live process holds (a SLURM job outliving its sweep) keeps its trial,
    and one whose job has finished since is told what the job answered: its value, or
    PRUNED."""
    client, parent, _, trackers = open_sweep(tmp_path, jobs=4)
    sweep = tmp_path / "sweep"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = [study.ask({}) for _ in range(5)]  # trial 4: another search's, running
    trials[3].set_user_attr(PRUNED_ATTR, 1)
    for tracker in trackers[2:]:  # jobs 2 and 3 finished
        tracker.emit("metrics", values={"final_val_accuracy": 0.875}, step=0,
                     timestamp=int(time.time() * 1000))
        tracker.emit("end", status="FINISHED", end_time=int(time.time() * 1000))
    for job, tracker in enumerate(trackers):
        settings = tracker.record.folder.parent / ".hydra" / "hydra.yaml"
        settings.parent.mkdir()
        settings.write_text(f"hydra:\n  sweeper:\n    study_name: s\n    storage: null\n"
                            f"  runtime:\n    cwd: {tmp_path}\n  job:\n    env_set:\n"
                            f"      MNIST_EXP_OPTUNA_TRIAL: '{trials[job]._trial_id}'\n")
    (sweep / sweep_lock.LOCK).write_text(f"pid 1 on {socket.gethostname()}\n")
    trackers[1].record.hold()  # job 1 still runs
    try:
        [line] = end_dead_sweeps([sweep])
    finally:
        trackers[1].record.let_go()
    storage = f"sqlite:///{tmp_path.resolve()}/optuna.db"
    assert line.endswith(f"and 2 job run(s); Optuna trial(s) 2, 3 of study 's' in {storage} "
                         f"told their finished jobs' results; Optuna trial(s) 0 of study "
                         f"'s' in {storage} told FAIL")
    assert [t.state.name for t in study.trials] == [
        "FAIL", "RUNNING", "COMPLETE", "PRUNED", "RUNNING"]
    assert study.trials[2].value == 0.875 and "abandoned" not in study.trials[2].user_attrs
    assert client.get_run(parent).info.status == "RUNNING"  # ended in its record, not yet
    assert upload_folder(sweep) == [] and client.get_run(parent).info.status == "KILLED"


def test_a_sweep_from_before_locks_is_named_and_ended_once_the_user_says_it_died(tmp_path):
    """sync cannot tell whether a sweep with no sweep.lock still runs: it names the sweep
    and how to end it, in one line, and ends it as a dead sweep only with --dead-sweeps."""
    client, parent, loose, [job] = open_sweep(tmp_path, jobs=1)
    synced = run_module("mnist_exp.sync", "sweep", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert synced.stderr.splitlines() == [
        f"sweep: its parent run {parent} is RUNNING, and whether its sweep still runs cannot "
        "be told: it has no sweep.lock (it started before sweeps held one); once its process "
        "has ended, python -m mnist_exp.sync --dead-sweeps sweep ends its open runs KILLED"]
    runs = (parent, loose)  # the job's own record, left by a dead process, is ended by sync
    assert [client.get_run(r).info.status for r in runs] == ["RUNNING"] * 2
    assert client.get_run(job.run_id).info.status == "KILLED"

    synced = run_module("mnist_exp.sync", "--dead-sweeps", "sweep", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert synced.stdout.splitlines()[0] == (
        f"sweep: the sweep's process said to have ended; ended KILLED ({ENDED_BY}=sync): its "
        f"parent run {parent} and 1 job run(s)")
    assert [client.get_run(r).info.status for r in runs] == ["KILLED"] * 2
    assert [client.get_run(r).data.tags[ENDED_BY] for r in runs] == ["sync"] * 2
    again = run_module("mnist_exp.sync", "sweep", cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == ""  # nothing open: not named again


def test_a_sweep_said_to_be_dead_whose_lock_is_held_is_left_alone(tmp_path, caplog):
    client, parent, _, _ = open_sweep(tmp_path, jobs=0)
    sweeper = holder(tmp_path / "sweep")
    try:
        assert end_dead_sweeps([tmp_path], declared=True) == []
    finally:
        sweeper.kill()
        sweeper.wait()
    assert "its sweep is running now (its lock is held): left as it is" in caplog.text
    assert client.get_run(parent).info.status == "RUNNING"


def _runs(workdir: Path):
    return sweep_runs(f"sqlite:///{workdir / 'mlflow.db'}", "mnist_sample")


@pytest.mark.slow
def test_a_search_killed_outright_is_closed_when_the_same_command_runs_again(tmp_path):
    killed_at(2, *SEARCH, cwd=tmp_path)
    _, [earlier], children = _runs(tmp_path)
    assert [c.info.status for c in sorted(children, key=lambda c: c.data.tags["sweep.job"])
            ] == ["FINISHED", "FINISHED", "RUNNING"]  # what the kill leaves behind

    again = run_module("mnist_exp.run", *SEARCH, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    client, parents, children = _runs(tmp_path)
    assert [r.info.status for r in [*parents, *children] if r.info.status == "RUNNING"] == []
    earlier = client.get_run(earlier.info.run_id)
    assert earlier.info.status == "KILLED" and earlier.data.tags[ENDED_BY] == "resume"
    [interrupted] = [c for c in children if c.data.tags["sweep.job"] == "2"
                     and c.data.tags["mlflow.parentRunId"] == earlier.info.run_id]
    assert interrupted.info.status == "KILLED" and interrupted.data.tags[ENDED_BY] == "resume"
    [later] = [p for p in parents if p.info.run_id != earlier.info.run_id]
    assert later.info.status == "FINISHED" and ENDED_BY not in later.data.tags
    assert sum(c.data.tags["mlflow.parentRunId"] == later.info.run_id for c in children) == 2
    study = optuna.load_study(study_name="mnist_exp", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name == "FAIL" for t in study.trials] == [False, False, True, False, False]
    assert study.trials[2].user_attrs["abandoned"]  # the interrupted trial, run anew


@pytest.mark.slow
def test_a_search_killed_outright_has_its_trial_ended_by_sync(tmp_path):
    """sync ends the interrupted trial as the same search run again would: FAIL, marked
    abandoned (so a later search runs it anew); the finished trial is left as it was."""
    killed_at(1, *SEARCH, "hydra.sweep.dir=sweep", cwd=tmp_path)
    storage = f"sqlite:///{tmp_path.resolve()}/optuna.db"
    study = optuna.load_study(study_name="mnist_exp", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]  # the kill's
    synced = run_module("mnist_exp.sync", "sweep", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    _, [parent], children = _runs(tmp_path)
    assert synced.stdout.splitlines()[0] == (
        f"sweep: the sweep's process had died; ended KILLED ({ENDED_BY}=sync): its parent "
        f"run {parent.info.run_id} and 1 job run(s); Optuna trial(s) 1 of study 'mnist_exp' "
        f"in {storage} told FAIL")
    assert [r.info.status for r in [parent, *children] if r.info.status == "RUNNING"] == []
    study = optuna.load_study(study_name="mnist_exp", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    assert study.trials[1].user_attrs["abandoned"] and "abandoned" not in study.trials[0].user_attrs
    assert "told FAIL" not in run_module("mnist_exp.sync", "sweep", cwd=tmp_path).stdout


@pytest.mark.slow
def test_a_sweep_killed_outright_is_closed_by_sync(tmp_path):
    """...and resumed afterwards, its parent run is reopened and no longer says it ended."""
    command = ("-m", "data=mnist_sample", *ONE_EPOCH, "optimizer.learning_rate=1e-3,3e-4",
               "hydra.sweep.dir=sweep")
    killed_at(1, *command, cwd=tmp_path)
    synced = run_module("mnist_exp.sync", "sweep", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr[-3000:]
    _, [parent], children = _runs(tmp_path)
    assert synced.stdout.splitlines()[0] == (
        f"sweep: the sweep's process had died; ended KILLED ({ENDED_BY}=sync): its parent "
        f"run {parent.info.run_id} and 1 job run(s)")
    assert parent.info.status == "KILLED" and parent.data.tags[ENDED_BY] == "sync"
    by_job = {c.data.tags["sweep.job"]: c for c in children}
    assert by_job["0"].info.status == "FINISHED" and ENDED_BY not in by_job["0"].data.tags
    assert by_job["1"].info.status == "KILLED" and by_job["1"].data.tags[ENDED_BY] == "sync"

    again = run_module("mnist_exp.run", *command, "hydra.callbacks.mlflow_sweep.resume=true",
                       cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    _, [parent], children = _runs(tmp_path)
    assert parent.info.status == "FINISHED" and ENDED_BY not in parent.data.tags
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED", "KILLED"]


@pytest.mark.slow
def test_a_grid_sweep_killed_outright_and_resumed_ends_its_interrupted_job(tmp_path):
    command = ("-m", "data=mnist_sample", *ONE_EPOCH, "optimizer.learning_rate=1e-3,3e-4",
               "hydra.sweep.dir=sweep")
    killed_at(1, *command, cwd=tmp_path)
    again = run_module("mnist_exp.run", *command, "hydra.callbacks.mlflow_sweep.resume=true",
                       cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    _, [parent], children = _runs(tmp_path)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 2
    assert sorted((c.data.tags["sweep.job"], c.info.status, c.data.tags.get(ENDED_BY))
                  for c in children) == [("0", "FINISHED", None), ("1", "FINISHED", None),
                                         ("1", "KILLED", "resume")]


MOUNTS = """/dev/sda1 / ext4 rw,relatime 0 0
server:/home /shared nfs4 rw,vers=4.2,local_lock=none,addr=10.0.0.1 0 0
server:/old /shared/old nfs rw,vers=3,nolock,local_lock=all 0 0
mds@tcp:/lustre /scratch lustre rw,localflock 0 0
/dev/sdb1 /data\\040disk ext4 rw 0 0
"""


@pytest.mark.parametrize(("path", "shared"), [
    ("/home/me/outputs", True), ("/shared/me/outputs", True), ("/shared/old/me", False),
    ("/shared/older", True), ("/scratch/me", False), ("/data disk/me", True)])
def test_another_machines_lock_counts_only_where_locks_are_shared(path, shared):
    """A free lock last held on another machine proves its sweep dead only on a file system
    whose locks every machine sees (not NFS with local locks, nor Lustre's localflock)."""
    assert locks_shared(Path(path), MOUNTS) is shared


def test_a_free_lock_of_another_machine_proves_nothing_where_locks_are_not_shared(
        tmp_path, monkeypatch):
    lock = tmp_path / sweep_lock.LOCK
    for host, shared, dead in [("elsewhere", False, None), (socket.gethostname(), False, True),
                               ("elsewhere", True, True)]:
        lock.write_text(f"pid 1 on {host}\n")
        monkeypatch.setattr(sweep_lock, "locks_shared", lambda path, shared=shared: shared)
        with sweep_lock.if_dead(tmp_path) as judged:
            assert judged is dead, (host, shared)  # None: it cannot be told
