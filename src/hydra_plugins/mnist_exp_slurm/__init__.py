"""mnist-exp's SLURM launcher for Hydra (`hydra/launcher=slurm`): hydra-submitit-launcher's,
with SLURM's stops handled. A package in Hydra's `hydra_plugins` namespace, so Hydra finds
it by scanning; its config is registered in config.py, its launcher lives in launcher.py.
"""
