"""The path each configuration takes (execution.py's rule for trainer.jit_compile=auto, and
the explicit settings over it), and a dropout model learning on the path chosen for it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from helpers import compose_config
from mnist_exp.config.schema import parse_config
from mnist_exp.data.load import load_dataset
from mnist_exp.training.execution import plan_for, prepare_model
from mnist_exp.training.fit import fit

ON_GPU = bool(tf.config.list_physical_devices("GPU"))
XLA = {"jit_compile": True, "steps_per_execution": 1}
KERAS_LOOP = {"jit_compile": False, "steps_per_execution": 64}
# On a CPU, XLA's convolutions cost more than XLA saves (docs/performance.md, "Corners of the
# schema"); on a GPU every model takes XLA. Dropout takes XLA, with masks it draws cheaply.
CONVOLUTIONS = XLA if ON_GPU else KERAS_LOOP


def _plan(*overrides: str):
    return plan_for(parse_config(compose_config(*overrides)))


@pytest.mark.parametrize(("overrides", "expected", "resident"), [
    ((), XLA, True),
    (("model.batch_norm=true",), XLA, True),
    (("trainer.label_smoothing=0.1", "trainer.lr_schedule.name=cosine"), XLA, True),
    (("trainer.batch_size=256",), XLA, True),
    (("trainer.augment.max_shift=2",), XLA, False),  # fused chunks, augmented on the host
    (("model.dropout=0.25",), XLA, True),
    (("model.dropout=0.25", "trainer.augment.max_shift=2"), XLA, False),
    (("experiment=mlp_tuned",), XLA, True),  # dropout 0.1
    (("model=cnn", "model.dropout=0.0"), CONVOLUTIONS, ON_GPU),
    (("model=cnn",), CONVOLUTIONS, ON_GPU),
], ids=["seed", "batch norm", "smoothing and schedule", "batch 256", "augmentation",
        "dropout", "dropout and augmentation", "mlp_tuned", "cnn without dropout", "cnn"])
def test_auto_takes_the_faster_path_of_each_corner(overrides, expected, resident):
    plan = _plan(*overrides)
    assert parse_config(compose_config(*overrides)).trainer.jit_compile == "auto"
    assert plan.compile_arguments == expected
    assert plan.resident == resident
    assert plan.fused == expected["jit_compile"]


def test_every_trial_of_the_default_search_space_trains_on_resident_sets_under_xla():
    """The Optuna space draws dropout from (0, 0.5): every trial has some."""
    for units in ("[64,32]", "[512,128]"):
        for batch in (32, 256):
            plan = _plan(f"model.hidden_units={units}", "model.dropout=0.01",
                         f"trainer.batch_size={batch}")
            assert plan.compile_arguments == XLA
            assert plan.resident


@pytest.mark.parametrize("model", ["model.dropout=0.25", "model=cnn", "model.dropout=0.0"])
def test_explicit_settings_override_auto(model):
    """trainer.jit_compile=true takes XLA and false never does, whatever the model or
    device; deterministic training never takes XLA, which has no deterministic mode."""
    assert _plan(model, "trainer.jit_compile=true").compile_arguments == XLA
    assert _plan(model, "trainer.jit_compile=true").resident
    assert _plan(model, "trainer.jit_compile=false").compile_arguments == KERAS_LOOP
    for jit in ("true", "auto"):
        deterministic = _plan(model, f"trainer.jit_compile={jit}", "trainer.deterministic=true")
        assert deterministic.compile_arguments == KERAS_LOOP


def test_a_dropout_model_learns_on_the_path_chosen_for_it(mini):
    config = parse_config(compose_config(
        f"data.path={mini}", "model.hidden_units=[256,64]", "model.dropout=0.25",
        "trainer.epochs=2", "trainer.compile_cache=false"))
    t = config.trainer
    data = load_dataset("mnist", str(mini), seed=t.seed, max_train_samples=600)
    model, plan = prepare_model(config, data)
    assert plan.compile_arguments == XLA
    assert model.jit_compile == plan.jit_compile
    history = fit(model, data, t, plan, learning_rate=config.optimizer.learning_rate,
                  verbose=0)
    assert history["loss"][1] < 0.85 * history["loss"][0]
    assert history["val_accuracy"][1] > 0.6


@pytest.mark.parametrize(("chosen", "expected"), [(None, "true"), ("false", "false")])
def test_tensorflow_gets_the_reusing_allocator_unless_the_user_chose(chosen, expected):
    """Set by the package before TensorFlow is imported (mnist_exp/__init__.py): TensorFlow
    reads it once, at its first allocation."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if chosen is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = chosen
    code = ("import os, mnist_exp; "
            "print(os.environ['TF_CPU_ALLOCATOR_USE_BFC'])")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == expected
