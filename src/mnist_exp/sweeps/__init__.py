"""Sweeps: the parent run and its summary, ranking runs, cluster checks, Optuna trials."""
