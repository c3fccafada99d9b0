"""hydra-submitit-launcher's SLURM launcher, with SLURM's stops handled on both sides.

In the job (`__call__`): SLURM's SIGTERM and submitit's USR2 stop it like Ctrl-C, after the
step under way (mnist_exp.sweeps.cluster.take_slurm_signals), not as submitit's handlers
would (ignore SIGTERM; requeue or raise inside TensorFlow on USR2); its run ends KILLED and
it leaves STOPPED in its folder. In the launching process (`launch`): the jobs' states come
from squeue when accounting is off (mnist_exp.sweeps.slurm_state), and a job that ended
without a result (killed after KillWait, out of memory, a lost node, or a state SLURM did
not tell for lost_after_min) is recorded as stopped too, so the sweep goes on to its
summary instead of ending in submitit's UncompletedJobError (its run, left RUNNING, is
ended KILLED from its record by the sweep's end). The base class's `launch` returns
`[j.results()[0] for j in jobs]`, so the method is the base's with that line changed.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict, read_write

from mnist_exp.sweeps.cluster import STOP_REASON, STOPPED_EXIT, take_slurm_signals
from mnist_exp.sweeps.failures import STOPPED, write_failure
from mnist_exp.sweeps.leftovers import end_open_records

log = logging.getLogger(__name__)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def __init__(self, lost_after_min: float = 10, **params: Any) -> None:
        super().__init__(**params)
        self.lost_after_min = lost_after_min

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """The job, on its node; submitit has set its signal handlers by now."""
        take_slurm_signals(self.params.get("signal_delay_s"))
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        from mnist_exp.sweeps.slurm_state import watch_slurm_jobs

        assert self.config is not None
        watch_slurm_jobs(self.lost_after_min * 60)
        params = dict(self.params)
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR,
                                         folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"{self._EXECUTOR}_{k}": v
                                      for k, v in params.items()})
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        calls = []
        for number, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
            calls.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}",
                          Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*calls, strict=True))
        return [self._result(job, overrides, number)
                for job, (overrides, _, number, *_) in zip(jobs, calls, strict=True)]

    def _result(self, job: Any, overrides: list[str], number: int) -> JobReturn:
        """The job's JobReturn; for a job that ended without one, a NaN answer and STOPPED
        in its folder, saying what SLURM said of it."""
        from submitit.core.utils import UncompletedJobError

        from mnist_exp.sweeps.slurm_state import LOST

        try:
            return job.results()[0]
        except UncompletedJobError:
            state = job.watcher.get_state(job.job_id, mode="cache")
        if state == LOST:
            reason = "lost: SLURM did not tell its state"
            line = (f"SLURM did not say for {self.lost_after_min:g} min whether job "
                    f"{job.job_id} still runs (hydra.launcher.lost_after_min); the sweep "
                    "stopped waiting for it")
        else:
            reason = f"killed: SLURM state {state}"
            line = (f"SLURM job {job.job_id} ended ({state}) without a result: killed after "
                    f"SLURM's KillWait, out of memory, or its node lost; see {job.paths.stderr}")
        ret = self._stopped_return(overrides, number)
        job_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir)
        write_failure(job_dir, line, STOPPED_EXIT, STOPPED)
        end_open_records(job_dir, {STOP_REASON: reason})  # a held record: its job may run
        log.error("job %d stopped: %s", number, line)
        return ret

    def _stopped_return(self, overrides: list[str], number: int) -> JobReturn:
        """What the job would have returned had it recorded its stop itself: NaN."""
        assert self.hydra_context is not None and self.config is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.job.num = number
            config.hydra.runtime.output_dir = str(Path(
                str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)).absolute())
        return JobReturn(overrides=overrides, hydra_cfg=config, working_dir=os.getcwd(),
                         status=JobStatus.COMPLETED, _return_value=math.nan)
