"""Command-line entry point: `python -m mnist_exp.evaluate model_uri=<model> [data=...]`.

Scores a logged model (a run id, m-..., runs:/..., models:/<name>@<alias>) on a test set
and records an evaluation run linked to it (jobs/evaluation.py does the work). Hydra
composes conf/evaluate.yaml from the same `data` and `tracking` groups as training; with
no data= given, the training run's data settings and seed are used, with any data.<key>=
given changed. The overrides are checked, as a run's are, before TensorFlow is imported.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist_exp.cli.checks import CONF_DIR, check_evaluation
from mnist_exp.cli.native_log import quiet_native_startup
from mnist_exp.cli.process_exit import exit_after
from mnist_exp.cli.run import HYDRA_FLAGS, interrupt, print_run_link
from mnist_exp.config.schema import EvaluationConfig, parse_config
from mnist_exp.errors import UserError, exit_with
from mnist_exp.tracking.store import check_reachable, resolve_tracking_uri


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def evaluation(cfg: DictConfig) -> float:
    """Evaluate the model; print its test accuracy and the run's link; return the accuracy.
    Any error ends it as it ends a training run: one line (errors.describe)."""
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        config = parse_config(cfg, EvaluationConfig)
        start = time.perf_counter()
        with quiet_native_startup(verbose=bool(hydra_cfg.verbose)):
            from mnist_exp.jobs.evaluation import run_evaluation  # heavy: TF and MLflow
        result = run_evaluation(config, overrides=tuple(hydra_cfg.overrides.task),
                                launch_dir=Path(hydra_cfg.runtime.cwd),
                                log_file=output_dir / f"{hydra_cfg.job.name}.log")
    except Exception as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" and not isinstance(e, UserError):
            raise  # for debugging: Hydra prints the whole traceback
        exit_with(e, output_dir / f"{hydra_cfg.job.name}.log")
    print(f"\nTest accuracy {result.test_accuracy:.4f} (loss {result.test_loss:.4f}) of "
          f"{result.model_uri} on {result.test_images} {result.data_name} test images "
          f"(classes {', '.join(result.class_names)}); {time.perf_counter() - start:.1f} s")
    if result.run_id is None:
        print(f"Recorded offline in {result.record}; upload it with: "
              f"python -m mnist_exp.sync {result.record}")
    else:
        print_run_link(result)
    return result.test_accuracy


def main() -> None:
    """Check the overrides and the tracking store (a second, before TensorFlow is imported),
    then hand over to Hydra."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is ours
    args = sys.argv[1:]
    if not {a.split("=")[0] for a in args if a.startswith("-")} & set(HYDRA_FLAGS):
        try:
            config = check_evaluation(args)
            check_reachable(resolve_tracking_uri(config.tracking.uri, Path.cwd()))
        except UserError as e:
            exit_with(e)
    signal.signal(signal.SIGTERM, interrupt)
    evaluation()


def cli() -> None:
    """`python -m mnist_exp.evaluate`: main, then the quick exit of process_exit.py."""
    exit_after(main)


if __name__ == "__main__":
    cli()
