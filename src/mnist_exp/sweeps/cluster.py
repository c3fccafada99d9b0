"""Sweeps on a cluster (hydra/launcher=slurm or ray): checks done in the launching process
before any job is submitted (a job SLURM rejects, or a warning on every poll, should not
be what a user has to read), and, inside a SLURM job, SLURM's stop signals.

SLURM stops a job with SIGTERM (scancel, its time limit, preemption; SIGKILL follows after
KillWait) and, for submitit's jobs, with USR2 `signal_delay_s` before the time limit.
submitit's own handlers ignore SIGTERM ("Bypassing signal SIGTERM") and meet USR2 by
requeueing the job or raising wherever the main thread is, inside TensorFlow too. So a
job takes both signals (`take_slurm_signals`): it stops after the step under way, like
Ctrl-C (training.interrupts), its run ends KILLED with tag `stop_reason`, and its sweep
records it and goes on (JobStopped).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime
from types import FrameType

from omegaconf import DictConfig, OmegaConf

from mnist_exp.errors import ClusterError


def is_slurm(launcher: DictConfig | dict) -> bool:
    return "SlurmLauncher" in str((launcher or {}).get("_target_", ""))


def check_partition(partition: str | None) -> None:
    """The partition exists on the SLURM cluster that SLURM_CONF (or /etc/slurm) names;
    None lets SLURM choose its default."""
    if shutil.which("sinfo") is None:
        raise ClusterError("hydra/launcher=slurm: SLURM's `sinfo` is not on PATH; run the "
                           "sweep from a SLURM login node")
    result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                            timeout=30)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no answer"])[-1]
        raise ClusterError(f"hydra/launcher=slurm: the SLURM controller does not answer "
                           f"({reason}); is SLURM_CONF={os.environ.get('SLURM_CONF', '')} right?")
    partitions = [p.rstrip("*") for p in result.stdout.split()]
    if partition is not None and partition not in partitions:
        raise ClusterError(f"hydra.launcher.partition={partition}: no such SLURM partition; "
                           f"allowed: {', '.join(partitions)}")


class _NoSacctWarnings(logging.Filter):
    """submitit's own watcher asks `sacct` on every poll and warns when it fails, which it
    always does where accounting is off. hydra/launcher=slurm asks squeue instead
    (slurm_state.py); this keeps the warning out where submitit's watcher still runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Bypassing sacct error" not in record.getMessage()


def quiet_submitit() -> None:
    logger = logging.getLogger("submitit")
    if not any(isinstance(f, _NoSacctWarnings) for f in logger.filters):
        logger.addFilter(_NoSacctWarnings())


def cores_per_job(launcher: DictConfig | dict) -> int | None:
    """The cores a cluster launcher books for each job (SLURM cpus_per_task, Ray's
    remote num_cpus), or None."""
    if not launcher:
        return None
    launcher = OmegaConf.create(dict(launcher)) if isinstance(launcher, dict) else launcher
    cores = OmegaConf.select(launcher, "cpus_per_task") or OmegaConf.select(
        launcher, "ray.remote.num_cpus")
    return int(cores) if cores else None


STOP_REASON = "stop_reason"  # the tag on a run SLURM stopped: cancelled, time limit, ...
STOPPED_EXIT = 143  # 128 + SIGTERM: how a shell reports a job SLURM terminated


class JobStopped(KeyboardInterrupt):
    """SLURM stopped the job. A KeyboardInterrupt, so everything that ends a run on Ctrl-C
    ends it KILLED (and keeps its last epoch); a sweep's job records it and answers NaN."""

    exit_code = STOPPED_EXIT

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"SLURM stopped job {job_id} ({reason}); its MLflow run is KILLED; "
                         "add hydra.callbacks.mlflow_sweep.resume=true to the sweep's command "
                         "to run it again")
        self.reason = reason


class _SlurmStop:
    """The handler of SLURM's stop signals: asks SLURM why, then raises JobStopped. Under
    training.interrupts.DeferredInterrupts it runs at the end of the step under way, and a
    repeat does not stop the job at once (`patient`): SLURM sends SIGTERM twice at a time
    limit or a preemption, and sends SIGKILL itself after KillWait. Once it has raised, it
    lets later signals be, so they cannot cut short the run's end."""

    patient = True
    note = b"\nmnist-exp: SLURM stops this job: stopping after the current step\n"

    def __init__(self, job_id: str, signal_delay_s: float) -> None:
        self.job_id, self.signal_delay_s = job_id, signal_delay_s
        self.stopping = False

    def __call__(self, number: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        reason = stop_reason(number, job_fields(self.job_id), self.signal_delay_s)
        raise JobStopped(self.job_id, reason)


def preemption_signal() -> signal.Signals:
    """The signal submitit asks SLURM to send before a time limit (USR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def take_slurm_signals(signal_delay_s: float | None) -> bool:
    """In a SLURM job, once submitit has set its handlers: SIGTERM and submitit's USR2 stop
    the job (JobStopped); SIGCONT, which SLURM sends with them, does what it does by
    default. Whether this is a SLURM job whose signals were taken."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id is None or threading.current_thread() is not threading.main_thread():
        return False
    if array := os.environ.get("SLURM_ARRAY_JOB_ID"):
        job_id = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    stop = _SlurmStop(job_id, signal_delay_s or 0)
    for number in {signal.SIGTERM, preemption_signal()}:
        signal.signal(number, stop)
    signal.signal(signal.SIGCONT, signal.SIG_DFL)
    return True


def job_fields(job_id: str, tries: int = 3) -> dict[str, str]:
    """SLURM's record of a job (`scontrol show job -o`) as KEY=value pairs; {} when the
    controller does not answer. A controller busy ending jobs can miss one question, so
    it is asked up to `tries` times."""
    for attempt in range(tries):
        try:
            shown = subprocess.run(["scontrol", "show", "job", "-o", job_id],
                                   capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            shown = None
        if shown is not None and shown.returncode == 0 and "JobState=" in shown.stdout:
            return dict(word.split("=", 1) for word in shown.stdout.split() if "=" in word)
        if attempt + 1 < tries:
            time.sleep(1.0)
    return {}


def stop_reason(number: int, fields: dict[str, str], signal_delay_s: float,
                now: datetime | None = None) -> str:
    """Why SLURM signalled the job, from its record at that moment: while the job ends
    (state COMPLETING) a time limit shows as Reason=TimeLimit and a preemption as a
    PreemptTime; otherwise it was cancelled. USR2 comes while the job still runs: near its
    end time it is submitit's notice of the time limit (SLURM sends it up to a minute
    early), else a preemption."""
    state = fields.get("JobState", "")
    if fields.get("Reason") == "TimeLimit" or state == "TIMEOUT":
        return "time limit"
    if fields.get("PreemptTime", "None") not in ("None", "Unknown") or state == "PREEMPTED":
        return "preempted"
    if state in ("COMPLETING", "CANCELLED"):
        return "cancelled"
    if number != preemption_signal():
        return f"{signal.Signals(number).name} while {state or 'its state was unknown'}"
    try:
        left = (datetime.fromisoformat(fields["EndTime"]) - (now or datetime.now())).total_seconds()
    except (KeyError, ValueError):
        return "preempted"
    return "time limit" if left <= signal_delay_s + 90 else "preempted"
