"""Every config group composes; every mistake stops at once with one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from helpers import compose_config, options, own_lines, run_module
from mnist_exp.cli.run import check_overrides
from mnist_exp.config.schema import Config, parse_config
from mnist_exp.errors import ConfigError

GROUPS = ["data", "model", "optimizer", "trainer", "tracking", "experiment", "hparams_search"]


def dotted_keys(values: dict, prefix: str = "") -> set[str]:
    """Every dotted key of nested dicts."""
    return {k for key, value in values.items()
            for k in (dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict)
                      else [f"{prefix}{key}"])}


@pytest.mark.parametrize(
    "override", [f"{group}={option}" for group in GROUPS for option in options(group)])
def test_every_group_option_composes_and_validates(override, monkeypatch):
    """Each option file composes and validates; a file of a schema section sets exactly the
    schema's keys (none left to a default the file does not show, none the schema lacks)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # tracking=team reads it
    composed = compose_config(override)
    config = parse_config(composed)
    group, option = override.split("=")
    if group in ("data", "model", "optimizer"):
        assert getattr(config, group).name == option
    if group in Config.model_fields:
        written = OmegaConf.to_container(composed[group], resolve=True)
        assert dotted_keys(written) == dotted_keys(getattr(config, group).model_dump())


def test_groups_have_the_options_users_expect():
    assert {"mnist", "fashion_mnist"} <= set(options("data"))
    assert {"adam", "adamw", "sgd", "rmsprop"} <= set(options("optimizer"))
    assert "mlp" in options("model")
    assert "seed_notebook" in options("experiment")


def test_seed_notebook_is_the_reference_recipe():
    c = parse_config(compose_config("experiment=seed_notebook"))
    assert (c.model.hidden_units, c.model.activation, c.model.dropout) == ([128, 32], "relu", 0)
    assert (c.optimizer.name, c.optimizer.learning_rate) == ("adam", 0.001)
    assert (c.trainer.epochs, c.trainer.batch_size) == (25, 32)
    assert not c.trainer.early_stopping.enabled
    assert (c.data.validation_split, c.data.normalization) == (0.2, "rescale")


def test_clothes_may_be_mirrored():
    config = parse_config(compose_config("data=fashion_mnist",
                                         "trainer.augment.horizontal_flip=true"))
    assert config.trainer.augment.horizontal_flip and config.data.mirror_invariant


def test_command_line_beats_the_preset():
    c = parse_config(compose_config("experiment=seed_notebook", "optimizer=sgd",
                                    "data=fashion_mnist", "trainer.epochs=3"))
    assert (c.optimizer.name, c.data.name, c.trainer.epochs) == ("sgd", "fashion_mnist", 3)
    assert c.tracking.experiment_name == "fashion_mnist"


BAD = [
    # wrong types
    ("trainer.epochs=ten", "trainer.epochs"),
    ("trainer.epochs=2.5", "trainer.epochs"),
    ("model.hidden_units=128", "model.hidden_units"),
    ("trainer.early_stopping.enabled=maybe", "trainer.early_stopping.enabled"),
    # out of range
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.batch_size=-8", "trainer.batch_size"),
    ("trainer.seed=-1", "trainer.seed"),
    ("data.validation_split=1.5", "data.validation_split"),
    ("data.validation_split=0", "data.validation_split"),
    ("model.hidden_units=[]", "model.hidden_units"),
    ("model.hidden_units=[128,0]", "model.hidden_units"),
    ("model.dropout=1.0", "model.dropout"),
    ("trainer.augment.max_shift=9", "trainer.augment.max_shift"),
    ("trainer.label_smoothing=1", "trainer.label_smoothing"),
    ("trainer.augment.horizontal_flip=maybe", "trainer.augment.horizontal_flip"),
    ("optimizer.learning_rate=0", "optimizer.learning_rate"),
    ("optimizer.beta_1=1.2", "optimizer.beta_1"),
    ("optimizer=adamw optimizer.weight_decay=-1", "optimizer.weight_decay"),
    ("optimizer=adamw optimizer.weight_decay=null", "optimizer.weight_decay"),
    ("optimizer=adamw optimizer.beta_1=1", "optimizer.beta_1"),
    ("data.path=/no/such/folder", "data.path"),
    # unknown names, in every group
    ("optimizer.name=lion", "optimizer.name"),
    ("model.activation=relux", "model.activation"),
    ("data.normalization=zscore", "data.normalization"),
    ("data.name=cifar10", "data.name"),
    ("trainer.early_stopping.monitor=val_f1", "trainer.early_stopping.monitor"),
    ("data.colour=1", "data.colour"),
    ("model.units=3", "model.units"),
    ("+optimizer.momentum=0.9", "optimizer.momentum"),
    ("+trainer.epoch=3", "trainer.epoch"),
    ("tracking.url=x", "tracking.url"),
    ("+trainer.early_stopping.foo=1", "trainer.early_stopping.foo"),
    ("verbose=1", "verbose"),
    ("optimizer=lion", "optimizer=lion"),
    ("data=cifar10", "data=cifar10"),
    ("model=resnet", "model=resnet"),
    ("trainer=fast", "trainer=fast"),
    ("tracking=remote", "tracking=remote"),
    ("experiment=paper", "experiment=paper"),
    # settings that contradict each other
    ("data.max_train_samples=20 data.validation_split=0.01", "data.validation_split"),
    ("data.max_train_samples=100 trainer.batch_size=500", "trainer.batch_size"),
    ("trainer.augment.horizontal_flip=true", "trainer.augment.horizontal_flip"),  # digits
]


@pytest.mark.parametrize(("overrides", "key"), BAD)
def test_bad_value_names_the_key_in_one_line(overrides, key):
    with pytest.raises(ConfigError) as error:
        check_overrides(overrides.split())
    message = str(error.value)
    assert message.startswith(f"{key}:"), message
    assert "\n" not in message


@pytest.mark.parametrize(("overrides", "line"), [
    ("trainer.epochs=0", "trainer.epochs: got 0; allowed: an integer >= 1"),
    ("optimizer.name=lion", "optimizer.name: got 'lion'; allowed: one of adam, adamw, sgd, "
                            "rmsprop"),
    ("optimizer=adamw optimizer.weight_decay=-1",
     "optimizer.weight_decay: got -1; allowed: a number >= 0"),
    ("optimizer=adamw optimizer.beta_1=1", "optimizer.beta_1: got 1; allowed: a number in [0, 1)"),
])
def test_cli_bad_config_is_one_line_and_leaves_nothing(tmp_path, overrides, line):
    result = run_module("mnist_exp.run", *overrides.split(), "hydra.run.dir=out", cwd=tmp_path)
    assert result.returncode == 2
    assert own_lines(result.stderr) == [f"mnist-exp: error: {line}"], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not [p.name for p in tmp_path.iterdir()]  # no store, no run, no Hydra folder


def test_help_and_validation_import_nothing_heavy():
    code = ("import sys; from mnist_exp import run, config; "
            "heavy = {'tensorflow', 'keras', 'mlflow'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_answers(tmp_path):
    result = run_module("mnist_exp.run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in GROUPS:
        assert group in result.stdout
