"""Config: defaults < YAML < --set overrides, type-checked, unknown keys named."""

import os

import pytest
import yaml

from pipeline.config import ConfigError, ExperimentConfig, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = [os.path.join(ROOT, "configs", f) for f in sorted(os.listdir(
    os.path.join(ROOT, "configs"))) if f.endswith(".yaml")]


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_configs_load_and_validate(path):
    cfg = load_config(path)
    assert cfg.name == os.path.basename(path)[:-5]


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: exp\ntrain:\n  epochs: 5\n  learning_rate: 0.01\n")
    cfg = load_config(str(path), ["train.epochs=7", "model.dropout=0.2",
                                  "export.tflite_variants=float32",
                                  "export.edge_variant=float32"])
    assert cfg.train.epochs == 7                  # override beats YAML
    assert cfg.train.learning_rate == 0.01        # YAML beats default
    assert cfg.train.global_batch_size == ExperimentConfig().train.global_batch_size
    assert cfg.model.dropout == 0.2
    assert cfg.export.tflite_variants == ["float32"]


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epoch: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.epoch'.*'train\.epochs'"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'"):
        load_config(None, ["modle.hidden_dim=3"])


@pytest.mark.parametrize("override, key", [
    ("train.epochs=three", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("model.norm_first=maybe", "model.norm_first"),
    ("train.learning_rate=true", "train.learning_rate"),
    ("export.tflite_variants=[{a: 1}]", r"export.tflite_variants\[0\]"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        load_config(None, [override])


def test_cross_field_rules_name_both_keys():
    with pytest.raises(ConfigError, match=r"model\.hidden_dim.*model\.num_heads"):
        load_config(None, ["model.hidden_dim=130", "model.num_heads=4"])
    with pytest.raises(ConfigError, match=r"export\.edge_variant"):
        load_config(None, ["export.tflite_variants=float32", "export.edge_variant=int8"])
    with pytest.raises(ConfigError, match=r"data\.train_path"):
        load_config(None, ["data.source=csv"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    path = tmp_path / "bad.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))
    path.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="'train'.*mapping"):
        load_config(str(path))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=4", "runtime.strategy=mirrored"])
    out = tmp_path / "run" / "config.yaml"
    cfg.save(str(out))
    again = load_config(str(out))
    assert again.to_dict() == cfg.to_dict()
    assert yaml.safe_load(out.read_text())["train"]["epochs"] == 4


def test_task_key_defaults_to_text_classification_and_names_unknown_tasks():
    from pipeline.tasks import get_task_class, task_names

    assert load_config(None).task == "text_classification"
    assert {"text_classification", "masked_lm"} <= set(task_names())
    assert get_task_class("text_classification").best_metric == "accuracy"
    with pytest.raises(ConfigError, match=r"config key 'task' = 'text_clasification'.*"
                                          r"did you mean 'text_classification'"):
        load_config(None, ["task=text_clasification"])


def test_each_task_validates_its_own_sections():
    # text classification checks model.pooling; masked-LM pre-training its section
    with pytest.raises(ConfigError, match=r"config key 'model\.pooling'"):
        load_config(None, ["model.pooling=max"])
    with pytest.raises(ConfigError, match=r"config key 'pretrain\.mask_rate'"):
        load_config(None, ["pretrain.enabled=true", "pretrain.mask_rate=1.5"])
