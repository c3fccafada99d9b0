"""Whether a SLURM job has ended, for submitit, with SLURM's accounting off too.

submitit asks `sacct` only. Where accounting is off that always fails, every job's state
stays UNKNOWN, and a job that ended without writing its result (killed after KillWait,
out of memory, a lost node) is waited for forever (its result file is all submitit
watches). This watcher asks `squeue` first, which keeps an ended job for SLURM's
MinJobAge (300 s by default), then `sacct` for a job squeue no longer lists, and counts a
job that neither lists as ended. When neither answers at all (the controller is down)
for `lost_after_s`, it stops waiting for the jobs still open, with one warning line.

Imported by the SLURM launcher only (hydra_plugins.mnist_exp_slurm): it needs submitit.
"""

from __future__ import annotations

import logging
import subprocess
import time

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)

ENDED = "ENDED"  # left squeue, and sacct has no record of it (accounting off)
LOST = "LOST"  # SLURM said nothing about it for lost_after_s
# States of a job that may still write its result; submitit's list lacks some, and holds
# PREEMPTED, which under PreemptMode=CANCEL is a job's last state.
INCOMPLETE = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING",
              "CONFIGURING", "SUSPENDED", "RESIZING", "REQUEUE_FED", "REQUEUE_HOLD",
              "SIGNALING", "STAGE_OUT", "STOPPED"}


class SlurmWatcher(SlurmInfoWatcher):
    """submitit's watcher of SLURM jobs (shared by all of them, polled at most every
    `delay_s`), asking squeue, then sacct."""

    def __init__(self, lost_after_s: float, delay_s: int = 30) -> None:
        super().__init__(delay_s=delay_s)
        self.lost_after_s = lost_after_s
        self._answered = time.monotonic()

    def register_job(self, job_id: str) -> None:
        super().register_job(job_id)
        self._answered = time.monotonic()  # a job just submitted: SLURM answered

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        state = self.get_state(job_id, mode=mode).upper().split() or ["UNKNOWN"]
        return state[0] not in INCOMPLETE  # sacct says "CANCELLED by 0"

    def update(self) -> None:
        open_jobs = self._registered - self._finished
        if not open_jobs:
            return
        self._num_calls += 1
        found, said = self._ask(open_jobs)
        if found is not None:
            self._answered = time.monotonic()
            self._info_dict.update(found)
        elif time.monotonic() - self._answered > self.lost_after_s:
            lost = sorted(open_jobs)
            log.warning("SLURM has not said for %.0f min whether job(s) %s still run (%s); "
                        "the sweep stops waiting for them (hydra.launcher.lost_after_min)",
                        self.lost_after_s / 60, ", ".join(lost), said)
            self._info_dict.update({job: {"State": LOST} for job in lost})
        self._last_status_check = time.time()
        for job_id in open_jobs:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def _ask(self, jobs: set[str]) -> tuple[dict[str, dict[str, str]] | None, str]:
        """The jobs' states by id (array tasks as 12_3) from squeue, then sacct; jobs
        neither lists are ENDED. None, and what the commands said, if neither answered."""
        ids = sorted({job.split("_")[0] for job in jobs})
        squeue = _run(["squeue", "-h", "--states=all", "-o", "%i|%T", "--jobs", ",".join(ids)])
        if squeue.returncode == 0 or "Invalid job id" in squeue.stderr:
            found = self.read_info("JobID|State\n" + squeue.stdout)
        else:
            found = None
        missing = sorted({job.split("_")[0] for job in jobs if found is None or job not in found})
        if missing:
            sacct = _run(["sacct", "-o", "JobID,State", "--parsable2",
                          *(f"-j{job}" for job in missing)])
            if sacct.returncode == 0:
                found = {**(found or {}), **self.read_info(sacct.stdout)}
            elif found is None:
                return None, f"squeue: {_last_line(squeue)}; sacct: {_last_line(sacct)}"
        return {job: found.get(job, {"State": ENDED}) for job in jobs}, ""


def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(command, 1, "", str(e))


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"


def watch_slurm_jobs(lost_after_s: float) -> SlurmWatcher:
    """Have every SLURM job of submitit's in this process watched by a SlurmWatcher (its
    class keeps one for them all): once, as a later sweep's watcher would lose the jobs
    the first one registered."""
    if not isinstance(SlurmJob.watcher, SlurmWatcher):
        SlurmJob.watcher = SlurmWatcher(lost_after_s)
    SlurmJob.watcher.lost_after_s = lost_after_s
    return SlurmJob.watcher
