"""What a finished search leaves behind: Optuna's best trial in optimization_results.yaml
(as hydra-optuna-sweeper wrote it), and pictures of the search on the sweep's MLflow parent
run: files of its record (sweeps/parent.py), uploaded with the sweep's summary. A picture
that cannot be drawn (e.g. importances before two trials completed) costs a log line,
never the sweep."""

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
    from optuna.visualization import matplotlib as views

    from mnist_exp.sweeps.parent import add_file, parent_record
    from mnist_exp.tracking.store import read_sweep_info

    info = read_sweep_info(sweep_dir)
    if info is None:
        return
    record = parent_record(sweep_dir, info)  # uploaded with the sweep's summary
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # string-valued choices
    for name, draw in [("optuna_history.png", plot_history),
                       ("optuna_importances.png", views.plot_param_importances),
                       ("optuna_parallel_coordinates.png", views.plot_parallel_coordinate),
                       ("optuna_slices.png", views.plot_slice)]:
        try:
            # Optuna sets its ggplot style for the whole process: keep it to its own pictures
            # (the sweep's comparison plot is drawn after these, in the same process).
            with matplotlib.rc_context(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental", flat axes of one-valued params
                axes = draw(study)
                figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
                # Optuna puts some legends right of the axes: keep them in the picture.
                add_file(record, name, lambda path, f=figure: f.savefig(
                    path, bbox_inches="tight"))
                plt.close(figure)
        except Exception as e:  # too few trials, a parameter of one value, ...
            log.info("No %s for this search: %s", name, str(e).splitlines()[0] if str(e) else
                     type(e).__name__)


def plot_history(study: Any) -> Any:
    """Optuna's optimization history, plus the pruned trials (which Optuna leaves out: they
    have no value) at the last value they reported, with a marker of their own; the legend
    below the axes, covering no point (Optuna puts it past the figure's right edge)."""
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as views

    ax = views.plot_optimization_history(study, target_name="validation accuracy")
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)])
              for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
              if t.intermediate_values]
    if pruned:
        numbers, values = zip(*pruned, strict=True)
        ax.scatter(numbers, values, marker="x", color="tab:gray", zorder=3,
                   label="Pruned (last reported value)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3, fontsize="small")
    return ax
