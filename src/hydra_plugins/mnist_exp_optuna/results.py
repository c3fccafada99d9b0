"""What a finished search leaves behind: Optuna's best trial in optimization_results.yaml
(as hydra-optuna-sweeper wrote it), and pictures of the search on the sweep's MLflow parent
run. A picture that cannot be drawn (e.g. importances before two trials completed) costs a
log line, never the sweep."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def record(study: Any, sweep_dir: Path) -> None:
    """Write the best trial to <sweep_dir>/optimization_results.yaml and log the figures
    to the sweep's parent run."""
    from optuna.trial import TrialState

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if completed:
        best = study.best_trial
        OmegaConf.save(OmegaConf.create({"name": "optuna", "study_name": study.study_name,
                                         "best_trial": best.number,
                                         "best_params": best.params,
                                         "best_value": best.value}),
                       sweep_dir / "optimization_results.yaml")
        log.info("Best trial %d: %.4f with %s", best.number, best.value,
                 " ".join(f"{k}={v}" for k, v in best.params.items()))
    _log_figures(study, sweep_dir)


def _log_figures(study: Any, sweep_dir: Path) -> None:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from optuna.visualization import matplotlib as views

    from mnist_exp.tracking.store import read_sweep_info

    info = read_sweep_info(sweep_dir)
    if info is None:
        return
    client = mlflow.MlflowClient(info.tracking_uri)
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # string-valued choices
    for name, draw in [("optuna_history.png", views.plot_optimization_history),
                       ("optuna_importances.png", views.plot_param_importances),
                       ("optuna_parallel_coordinates.png", views.plot_parallel_coordinate),
                       ("optuna_slices.png", views.plot_slice)]:
        try:
            with warnings.catch_warnings():  # "experimental", flat axes of one-valued params
                warnings.simplefilter("ignore")
                axes = draw(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            client.log_figure(info.parent_run_id, figure, name)
            plt.close(figure)
        except Exception as e:  # too few trials, a parameter of one value, ...
            log.info("No %s for this search: %s", name, str(e).splitlines()[0] if str(e) else
                     type(e).__name__)
