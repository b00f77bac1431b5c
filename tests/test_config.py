"""Typed configs: YAML overrides, key=value, unknown keys with their path and the nearest valid name."""

import copy
from pathlib import Path

import pytest
import yaml

from a2v_het.config import (ConfigDeprecationWarning, ConfigError, _merge, config_from_dict, config_to_dict,
                            load_config, parse_overrides, save_config)
from a2v_het.model.config import ModelConfig
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
    ("frontend.heterodyne.energy_weigth=2", "frontend.heterodyne.energy_weigth", "frontend.heterodyne.energy_weight"),
    ("optimm.lr=1", "optimm", "optim"),
])
def test_unknown_key_names_its_path_and_the_nearest_key(override, path, nearest):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, [override])
    assert repr(path) in str(err.value) and repr(nearest) in str(err.value)


# ------------------------------------------------------------------------------------------ moved keys
def test_moved_keys_load_at_their_new_place_with_a_warning_naming_it(tmp_path):
    """model.lambda_energy / lambda_surprise (before the weights moved to the heterodyne frontend) still load."""
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model:\n  lambda_energy: 2.0\n  mask_prob: 0.4\n")
    with pytest.warns(ConfigDeprecationWarning, match="'frontend.heterodyne.energy_weight'"):
        cfg = load_config(PretrainConfig, recipe)
    assert cfg.frontend.heterodyne.energy_weight == 2.0 and cfg.model.mask_prob == 0.4
    assert cfg.frontend.heterodyne.surprise_weight == 1.0
    with pytest.warns(ConfigDeprecationWarning, match="'frontend.heterodyne.surprise_weight'"):
        cfg = load_config(PretrainConfig, None, ["model.lambda_surprise=0.5"])
    assert cfg.frontend.heterodyne.surprise_weight == 0.5
    # the command line still overrides a recipe's old key, in either spelling
    with pytest.warns(ConfigDeprecationWarning):
        cfg = load_config(PretrainConfig, recipe, ["frontend.heterodyne.energy_weight=3"])
    assert cfg.frontend.heterodyne.energy_weight == 3.0


def test_an_old_run_folders_saved_config_still_loads(tmp_path):
    tree = config_to_dict(PretrainConfig())
    del tree["frontend"]["heterodyne"]["energy_weight"], tree["frontend"]["heterodyne"]["surprise_weight"]
    tree["model"].update(lambda_energy=0.25, lambda_surprise=4)
    before = copy.deepcopy(tree)
    with pytest.warns(ConfigDeprecationWarning) as record:
        cfg = config_from_dict(PretrainConfig, tree)
    assert sorted(str(w.message).split(" is deprecated")[0] for w in record) == [
        "saved config: config key 'model.lambda_energy'", "saved config: config key 'model.lambda_surprise'"]
    assert tree == before  # the caller's tree is not modified
    assert (cfg.frontend.heterodyne.energy_weight, cfg.frontend.heterodyne.surprise_weight) == (0.25, 4.0)
    # the model section on its own (a2v_het/eval/run_files.py): the key is dropped, with a warning
    with pytest.warns(ConfigDeprecationWarning, match="ignored here") as record:
        assert config_from_dict(ModelConfig, tree["model"]) == ModelConfig()
    assert len(record) == 2


def test_a_moved_key_given_twice_must_agree(tmp_path):
    with pytest.raises(ConfigError, match="keep only 'frontend.heterodyne.energy_weight'"):
        load_config(PretrainConfig, None, ["model.lambda_energy=2", "frontend.heterodyne.energy_weight=3"])
    with pytest.warns(ConfigDeprecationWarning):
        cfg = load_config(PretrainConfig, None, ["model.lambda_energy=2", "frontend.heterodyne.energy_weight=2"])
    assert cfg.frontend.heterodyne.energy_weight == 2.0


def test_a_moved_key_that_cannot_move_names_its_new_place():
    with pytest.raises(ConfigError, match="it moved to 'frontend.heterodyne.energy_weight'"):
        _merge(PretrainConfig(), {"model": {"lambda_energy": 1.0}})
    with pytest.raises(ConfigError, match="must be >= 0"):
        load_config(PretrainConfig, None, ["frontend.heterodyne.surprise_weight=-1"])


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
