"""Checks and quieting for sweeps launched on a cluster (hydra/launcher=slurm or ray), done
in the launching process before any job is submitted: a job SLURM rejects, or a warning
on every poll, should not be what a user has to read.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

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
    """submitit asks `sacct` for job states on every poll and warns when it fails, which it
    always does where accounting is off; it falls back to squeue, so the warning is noise."""

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
