"""Wall time of one 8-job sweep (data=mnist_sample, 5 epochs) under each launcher, all
logging to the team's tracking server: in turn, joblib, SLURM and Ray.

    python scripts/services.py up all /tmp/stack
    python scripts/sweep_timing.py /tmp/stack       # prints a Markdown table

Parallel launchers get one core per job and as many jobs at once as the machine has cores,
so they compare like for like. Each sweep runs in a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import services

GRID = ("optimizer.learning_rate=1e-3,3e-4", "model.hidden_units=[128],[64]",
        "trainer.batch_size=64,128")
LAUNCHERS = {
    "in turn": (),
    "joblib": ("hydra/launcher=joblib", f"hydra.launcher.n_jobs={os.cpu_count()}"),
    "SLURM": ("hydra/launcher=slurm", "hydra.launcher.partition=debug",
              "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"),
    "Ray": ("hydra/launcher=ray",),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stack", type=Path, help="the folder given to services.py up")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, **services.env(args.stack.resolve())}
    print("| launcher | 8 jobs, wall time |\n| --- | --- |")
    for name, launcher in LAUNCHERS.items():
        with tempfile.TemporaryDirectory() as work:
            start = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "mnist_exp.run", "-m", "tracking=team",
                 "data=mnist_sample", f"trainer.epochs={args.epochs}", *GRID, *launcher,
                 f"tracking.experiment_name=timing-{name.replace(' ', '-')}",
                 "hydra.sweep.dir=sweep"], cwd=work, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
        if result.returncode:
            sys.exit(f"{name}: the sweep failed:\n{result.stderr[-2000:]}")
        print(f"| {name} | {seconds:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
