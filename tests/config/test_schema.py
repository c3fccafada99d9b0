"""The schema is the one place per setting: the option YAML files and the configuration
page (docs/configuration.md) agree with it, so none of the three can drift from the others."""

from __future__ import annotations

import importlib.util

import pytest
from omegaconf import OmegaConf

from helpers import ROOT, compose_config, options
from mnist_exp.config.schema import MODELS, OPTIMIZERS, Config

FAMILIES = {"model": MODELS, "optimizer": OPTIMIZERS}
SECTIONS = ["data", "model", "optimizer", "trainer", "tracking"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def keys(values: dict, prefix: str = "") -> set[str]:
    """Every dotted key of nested dicts."""
    return {k for key, value in values.items()
            for k in (keys(value, f"{prefix}{key}.") if isinstance(value, dict)
                      else [f"{prefix}{key}"])}


def composed(group: str, option: str) -> dict:
    return OmegaConf.to_container(compose_config(f"{group}={option}")[group], resolve=True)


@pytest.mark.parametrize("group", FAMILIES)
def test_every_option_of_a_family_has_a_yaml_file_named_after_it(group):
    assert options(group) == sorted(FAMILIES[group])


@pytest.mark.parametrize(("group", "option"), [
    *[("model", option) for option in MODELS], *[("optimizer", option) for option in OPTIMIZERS],
    ("trainer", "default"), ("data", "mnist")])
def test_option_yaml_has_the_schema_defaults(group, option):
    schema = FAMILIES[group][option] if group in FAMILIES else Config.model_fields[group].annotation
    assert composed(group, option) == schema().model_dump()


CONFIGURATION_PAGE = ROOT / "docs" / "configuration.md"


def test_configuration_page_settings_tables_are_current():
    page = CONFIGURATION_PAGE.read_text()
    assert _script("config_table").update(page) == page, "run: python scripts/config_table.py"


def test_settings_tables_name_every_key_of_every_option():
    tables = _script("config_table").render()
    for group, field in Config.model_fields.items():
        for option, schema in FAMILIES.get(group, {None: field.annotation}).items():
            if option:
                assert f"`{group}={option}`" in tables
            for key in keys(schema().model_dump()) - ({"name"} if option else set()):
                assert f"| `{group}.{key}` |" in tables, f"{group}.{key}"


def test_configuration_page_names_every_group_and_option():
    page = CONFIGURATION_PAGE.read_text()
    configuration = page.split("\n## Groups and options\n")[1].split("\n## ")[0]
    for group in [*SECTIONS, "experiment", "hparams_search", "hydra/launcher"]:
        assert f"| `{group}` |" in configuration, group
        for option in options(group):
            assert f"`{option}`" in configuration, f"{group}={option}"
