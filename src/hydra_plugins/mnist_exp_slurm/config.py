"""The launcher's settings, registered as `hydra/launcher=mnist_exp_slurm` (conf/hydra/
launcher/slurm.yaml builds on it): hydra-submitit-launcher's SLURM settings and one more.
No `from __future__ import annotations`: the scan runs this module outside sys.modules,
where dataclasses cannot resolve string annotations."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class SlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.mnist_exp_slurm.launcher.SlurmLauncher"
    # How long the sweep waits on a job whose state SLURM does not tell (neither squeue nor
    # sacct answers) before it counts the job as stopped and goes on
    lost_after_min: float = 10


ConfigStore.instance().store(group="hydra/launcher", name="mnist_exp_slurm", node=SlurmConf,
                             provider="mnist_exp")
