"""Jobs in one process train one kept model per compiled program (trainer.reuse_model).

TensorFlow names every traced function with a process-wide counter, and XLA's persistent
cache keys on that name, so a fresh model in each of a sweep's jobs traces the same steps
again and, their names being new, compiles them again too. Jobs that share a process
(Hydra's basic launcher, an Optuna study's trials, a joblib worker's later jobs) and whose
models differ only in their values take the model kept from an earlier job instead, with
the fresh model's whole state copied in: weights, random-seed states, and the optimizer's
step, learning rate and moments. The job then trains exactly as the fresh model would have
(test_kept_models.py), on steps already traced.

What Keras bakes into the traced program is the key: the layers' configs, the loss, the
metrics and the optimizer's settings, all but its learning rate, which is a variable, and,
under XLA, the dropout rates, which are variables there too (xla_dropout.py).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import TYPE_CHECKING

import keras

from mnist_exp.training.xla_dropout import dropout_layers, use_variable_rates

if TYPE_CHECKING:
    from mnist_exp.training.execution import ExecutionPlan

KEEP = 4  # programs kept per process: a grid over two or three settings alternates them

_kept: OrderedDict[str, keras.Model] = OrderedDict()


def adopt(fresh: keras.Model, plan: ExecutionPlan) -> keras.Model:
    """The kept model of fresh's program, holding fresh's state; else fresh, kept for the
    next job. `fresh` must be compiled, with nothing trained yet. The batch sizes and set
    shapes the plan's steps are traced for are part of the key (resident.py keeps one set of
    steps per model, so a sweep over batch sizes keeps a model per size)."""
    key = program_key(fresh, variable_rates=plan.jit_compile) + repr(plan.traced_for)
    kept = _kept.pop(key, None)
    if kept is None:
        kept = fresh
    else:
        _copy_state(fresh, kept)
        if plan.jit_compile:  # the saved model's config, and what its steps read
            for source, target in zip(dropout_layers(fresh), dropout_layers(kept), strict=True):
                target.rate = source.rate
            use_variable_rates(kept)
    _kept[key] = kept
    while len(_kept) > KEEP:
        _kept.popitem(last=False)
    return kept


def forget() -> None:
    """Drop every kept model (and what they hold on the device)."""
    _kept.clear()


def program_key(model: keras.Model, variable_rates: bool = False) -> str:
    """What the traced steps depend on, but for the layers' and optimizer's names (Keras
    numbers them per process), a constant learning rate and, with `variable_rates`, the
    dropout rates."""
    def varying(layer: dict) -> set[str]:
        return {"name", "rate"} if variable_rates and layer["class_name"] == "Dropout" else {"name"}

    config = model.get_config()
    layers = [{**layer, "config": {k: v for k, v in layer["config"].items()
                                   if k not in varying(layer)}}
              for layer in config["layers"]]
    compiled = model.get_compile_config()
    variable = {"name"} | ({"learning_rate"} if isinstance(
        compiled["optimizer"]["config"].get("learning_rate"), float) else set())
    optimizer = {k: v for k, v in compiled["optimizer"]["config"].items() if k not in variable}
    compiled = {**compiled, "optimizer": {**compiled["optimizer"], "config": optimizer}}
    return json.dumps([{**config, "layers": layers}, compiled], sort_keys=True, default=repr)


def _copy_state(fresh: keras.Model, kept: keras.Model) -> None:
    """Every variable of fresh (and of its optimizer, built for the purpose) into kept's."""
    for model in (fresh, kept):
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    pairs = [*zip(fresh.variables, kept.variables, strict=True),
             *zip(fresh.optimizer.variables, kept.optimizer.variables, strict=True)]
    for source, target in pairs:
        if source.shape != target.shape or source.dtype != target.dtype:
            raise ValueError(f"kept model differs from the fresh one at {target.path}")
        target.assign(source)
    kept.reset_metrics()
    kept.stop_training = False
    kept._initial_epoch = None  # BackupAndRestore's resumed epoch, from an earlier job
