"""Typed configs: YAML overrides, key=value, unknown keys with their path and the nearest valid name."""

from pathlib import Path

import pytest
import yaml

from a2v_het.config import ConfigError, config_from_dict, config_to_dict, load_config, parse_overrides, save_config
from a2v_het.train.config import PretrainConfig

# Pretraining recipes; the *_finetune.yaml ones are FinetuneConfigs, tested in tests/test_finetune.py.
RECIPES = [p for p in sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
           if not p.name.endswith("_finetune.yaml")]


def test_overrides_parse_as_yaml_scalars_and_lists():
    tree = parse_overrides(["a.b=1", "a.c=true", "d=[8000, 16000]", "e=hello"])
    assert tree == {"a": {"b": 1, "c": True}, "d": [8000, 16000], "e": "hello"}
    # YAML 1.1 reads 1e-3 as a string; a float field still takes it
    assert load_config(PretrainConfig, None, ["optim.lr=1e-3"]).optim.lr == 1e-3


def test_recipe_then_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  max_steps: 7\n  log_every: 3\nfrontend:\n  heterodyne:\n    num_bands: 4\n")
    cfg = load_config(PretrainConfig, recipe, ["train.max_steps=9", "data.synth_sample_rates=[8000, 96000]"])
    assert cfg.train.max_steps == 9 and cfg.train.log_every == 3
    assert cfg.frontend.heterodyne.num_bands == 4
    assert cfg.data.synth_sample_rates == (8000, 96000)
    assert cfg.optim.lr == PretrainConfig().optim.lr  # untouched default


@pytest.mark.parametrize("override, path, nearest", [
    ("train.max_step=3", "train.max_step", "train.max_steps"),
    ("frontend.heterodyne.num_band=3", "frontend.heterodyne.num_band", "frontend.heterodyne.num_bands"),
    ("model.lamda_energy=2", "model.lamda_energy", "model.lambda_energy"),
    ("optimm.lr=1", "optimm", "optim"),
])
def test_unknown_key_names_its_path_and_the_nearest_key(override, path, nearest):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, [override])
    assert repr(path) in str(err.value) and repr(nearest) in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ("train.max_steps=many", "expected an integer"),
    ("frontend.heterodyne.mixing=cosinus", "did you mean 'cosine'"),
    ("train.zero_stage=3", "zero_stage"),
    ("optim.lr=[1, 2]", "expected a number"),
])
def test_bad_values_are_clear_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(PretrainConfig, None, [override])


def test_recipe_must_be_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(PretrainConfig, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(PretrainConfig, None, ["model.depth=9", "frontend.name=conv"])
    save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(PretrainConfig, yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg
    assert config_to_dict(again)["model"]["depth"] == 9


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_loads(recipe):
    cfg = load_config(PretrainConfig, recipe)
    cfg.validate()
    assert yaml.safe_load(recipe.read_text()), f"{recipe.name} is empty"
