"""mnist-exp's Optuna sweeper for Hydra, on Optuna's ask/tell API (`hydra/sweeper=optuna`).

A package in Hydra's `hydra_plugins` namespace, so Hydra finds it by scanning; its config
is registered in config.py, its sweeper lives in sweeper.py.
"""
