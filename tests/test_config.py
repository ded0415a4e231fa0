"""Config: YAML -> dotted overrides -> typed, validated, frozen; errors name the key."""

from __future__ import annotations

import dataclasses

import pytest

from dcclip.config import ConfigError, RunConfig, load_config, save_config


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_then_overrides_then_types(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: 16\n  langs: [en, fr]\noptim:\n  lr: 1.0e-3\n")
    cfg = load_config(path, ["optim.lr=3e-4", "data.langs=[en,zh,ar]", "train.precision=bf16", "train.steps=7"])
    assert cfg.data.batch_size == 16
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.langs == ("en", "zh", "ar")
    assert cfg.train.precision == "bf16" and cfg.train.steps == 7


def test_config_is_frozen():
    cfg = load_config(None, [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


def test_unknown_key_in_yaml_names_path_and_closest(tmp_path):
    path = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr.*'lr'"):
        load_config(path)


def test_unknown_override_names_path_and_closest():
    with pytest.raises(ConfigError, match=r"data\.batchsize.*'batch_size'"):
        load_config(None, ["data.batchsize=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'dta'.*'data'"):
        load_config(None, ["dta.batch_size=3"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("data.batch_size=many", r"data\.batch_size: expected int"),
        ("data.batch_size=2.5", r"data\.batch_size: expected int"),
        ("train.precision=fp8", r"train\.precision: 'fp8' is not one of"),
        ("data.resampled=maybe", r"data\.resampled: expected true or false"),
        ("optim.betas=[0.9]", r"optim\.betas: expected 2 values"),
        ("data.batch_size=0", r"data\.batch_size: must be >= 1"),
        ("optim.lr=abc", r"optim\.lr: expected float"),
    ],
)
def test_wrong_types_and_values_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_override_must_have_equals():
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(None, ["optim.lr"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["data.langs=[en,zh]", "optim.lr=0.01", "student.model=test-student"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert isinstance(again, RunConfig)


def test_missing_config_file_lists_shipped(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
