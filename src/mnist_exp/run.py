"""Command-line entry point: `python -m mnist_exp.run [group=option] [key=value] ...`.

The only module that knows about Hydra. The config is checked before TensorFlow or
MLflow is imported, so `--help`, `--cfg job` and a typo answer in about a second.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_exp.config import UserError, parse_config

log = logging.getLogger("mnist_exp")


def _config_dir() -> Path:
    packaged = Path(__file__).resolve().parent / "conf"  # inside a built wheel
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


CONF_DIR = _config_dir()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one experiment; return its validation accuracy for Hydra's sweepers."""
    try:
        config = parse_config(cfg)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
        from mnist_exp.pipeline import run_experiment  # heavy imports only once the config is valid

        result = run_experiment(config, _context())
    except UserError as e:
        print(f"mnist-exp: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("mnist-exp: interrupted; the MLflow run is marked KILLED", file=sys.stderr)
        raise SystemExit(130) from None
    _print_summary(result)
    return result.val_accuracy


def _context():
    from mnist_exp.pipeline import RunContext

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    return RunContext(
        overrides=tuple(hydra_cfg.overrides.task),
        launch_dir=Path(hydra_cfg.runtime.cwd),
        hydra_dir=output_dir / hydra_cfg.output_subdir if hydra_cfg.output_subdir else None,
        log_file=output_dir / f"{hydra_cfg.job.name}.log",
        progress_bar=hydra_cfg.mode == RunMode.RUN,
    )


def _print_summary(result) -> None:
    uri = result.tracking_uri
    default_uri = f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"
    if uri.startswith("http"):
        browse, base = f"open {uri}", uri.rstrip("/")
    else:
        browse = "mlflow ui" if uri == default_uri else f"mlflow ui --backend-store-uri {uri}"
        base = "http://127.0.0.1:5000"
    print(
        f"\nTest accuracy {result.test_accuracy:.4f} (loss {result.test_loss:.4f}); "
        f"validation accuracy {result.val_accuracy:.4f}\n"
        f"MLflow run '{result.run_name}' ({result.run_id}) in {uri}\n"
        f"Browse: {browse}  ->  {base}/#/experiments/{result.experiment_id}/runs/{result.run_id}"
    )


if __name__ == "__main__":
    main()
