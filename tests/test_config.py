"""Defaults < YAML < command line; bad options fail with the key, the allowed values and the nearest spelling."""

import re
from pathlib import Path

import pytest
import yaml

from xfer_nlp.config import RunConfig, parse_args, resolve, unused_settings
from xfer_nlp.modes import MODES
from xfer_nlp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

RECIPE_CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "sentiment"


def test_yaml_then_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"mode": "lora", "learning_rate": 1e-3, "lora_r": 4}))
    cfg = parse_args(["--config", str(path), "--lora_r", "16"])
    assert (cfg.mode, cfg.learning_rate, cfg.lora_r) == ("lora", 1e-3, 16)


def test_unknown_yaml_key_suggests_nearest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match="'learnin_rate' \\(did you mean 'learning_rate'\\?\\)"):
        parse_args(["--config", str(path)])


def test_a_yaml_key_set_twice_is_named_with_its_line(tmp_path):
    """PyYAML kept the last of the two and dropped the first silently."""
    path = tmp_path / "c.yaml"
    path.write_text("mode: lora\nlearning_rate: 1e-4\nlora_r: 4\nlearning_rate: 3e-4\n")
    with pytest.raises(ConfigError, match=r"'learning_rate' is set twice; keep one of the two\n.*c\.yaml\", line 4"):
        parse_args(["--config", str(path)])
    path.write_text("mode: lora\nlora_r: 4\n")
    assert parse_args(["--config", str(path)]).lora_r == 4


def test_a_config_from_a_pipe_is_read_and_a_folder_named(tmp_path):
    """bash's `--config <(...)` (a pipe at /dev/fd/N) and a folder were both said not to exist."""
    import os
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=("mode: lora\nlora_r: 4\n",), daemon=True)
    writer.start()
    cfg = parse_args(["--config", str(fifo)])
    assert (cfg.mode, cfg.lora_r) == ("lora", 4)
    with pytest.raises(ConfigError, match=f"Config file '{re.escape(str(tmp_path))}' is a folder. Pass --config"):
        parse_args(["--config", str(tmp_path)])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_args(["--config", str(tmp_path / "none.yaml")])


@pytest.mark.parametrize("line,message", [
    ('learning_rate: "abc"', "learning_rate: 'abc' is not a number"),
    ("gradual_unfreezing: maybe", "gradual_unfreezing: 'maybe' is not true or false"),
    ("max_train_samples: ten", "max_train_samples: 'ten' is not an integer"),
])
def test_a_yaml_value_of_the_wrong_type_is_named_by_file_and_key(tmp_path, line, message):
    """argparse converted it by the flag's type and blamed the flag (--learning_rate), which nobody had given."""
    path = tmp_path / "c.yaml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=f"Config file '{re.escape(str(path))}': {message}\\.$"):
        parse_args(["--config", str(path)])
    path.write_text("learning_rate: 5e-5\nmax_train_samples: '64'\ngradual_unfreezing: yes\n")  # YAML 1.1: texts
    cfg = parse_args(["--config", str(path)])
    assert (cfg.learning_rate, cfg.max_train_samples, cfg.gradual_unfreezing) == (5e-5, 64, True)


def test_the_python_api_names_a_positional_option_and_one_that_does_not_apply(tiny_model_dir, tmp_path):
    """run("probe") and compare("probe") raised dataclasses' "replace() should be called on dataclass instances",
    compare(bogus=1) a TypeError where run named the option, and evaluate(learning_rate=...) went unread."""
    import xfer_nlp

    positional = r"The config argument is a RunConfig \(or None\), got str 'probe'. Give options as keywords"
    for call in (lambda: xfer_nlp.run("probe"), lambda: xfer_nlp.compare("probe"),
                 lambda: xfer_nlp.evaluate(tiny_model_dir, "probe")):
        with pytest.raises(ConfigError, match=positional):
            call()
    with pytest.raises(ConfigError, match=r"Unknown option\(s\): 'learnin_rate' \(did you mean 'learning_rate'\?\)"):
        xfer_nlp.compare(modes="probe", learnin_rate=1e-3, output_dir=tmp_path / "grid")
    with pytest.raises(ConfigError, match="Option\\(s\\) 'learning_rate' do not apply to evaluate, which scores a "
                                          "finished model. It takes dataset_name, "):
        xfer_nlp.evaluate(tiny_model_dir, dataset_name="sst2", learning_rate=1e-3, output_dir=tmp_path / "e")
    assert not (tmp_path / "grid").exists() and not (tmp_path / "e").exists()


def test_a_path_option_from_yaml_or_python_expands_the_home_folder(tiny_model_dir, tmp_path, monkeypatch):
    """A shell expands ~ on the command line; from YAML or Python a run wrote into a folder named "~" under the
    working directory, and predict read '~/runs/x' as a Hub id."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import xfer_nlp

    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: ~/runs/probe\nfeature_cache_dir: ~/features\ntrain_file: ~/data/train.jsonl\n")
    cfg = resolve(parse_args(["--config", str(path), "--mode", "probe"]))
    assert (cfg.output_dir, cfg.feature_cache_dir, cfg.train_file) == (
        str(tmp_path / "runs" / "probe"), str(tmp_path / "features"), str(tmp_path / "data" / "train.jsonl"))
    assert resolve(RunConfig(mode="probe", model_name_or_path="~/m")).model_name_or_path == str(tmp_path / "m")
    assert resolve(RunConfig(mode="probe", text_column="~text")).text_column == "~text"  # not a path: as given
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).save_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "m")
    assert xfer_nlp.predict("~/m", ["a good film"]) == xfer_nlp.predict(tmp_path / "m", ["a good film"])


def test_a_comma_list_may_be_a_list_and_a_path_a_path_in_python_and_yaml(tmp_path):
    """A notebook's probe_c_grid=[0.1, 1] (or a YAML list) raised AttributeError: 'list' object has no attribute
    'split'."""
    cfg = resolve(RunConfig(probe_c_grid=[0.1, 1], report_to=("tensorboard",), class_weights=[1, 2]))
    assert (cfg.probe_c_grid, cfg.report_to, cfg.class_weights) == ("0.1,1", "tensorboard", "1,2")
    path = tmp_path / "c.yaml"
    path.write_text("mode: lora\nlora_target_modules: [query, value]\n")
    assert resolve(parse_args(["--config", str(path)])).lora_target_modules == "query,value"
    # a Path for a path: results.json could not be written (yaml cannot represent it), at the end of the run
    cfg = resolve(RunConfig(dataset_name=tmp_path / "data", output_dir=tmp_path / "run"))
    assert (cfg.dataset_name, cfg.output_dir) == (str(tmp_path / "data"), str(tmp_path / "run"))


def test_a_window_with_no_room_for_text_is_refused():
    """--max_seq_length 2 trained, then the run's own reading record was refused as malformed."""
    with pytest.raises(ConfigError, match=r"--max_seq_length 2 leaves no room for text beside the encoder's two "
                                          r"special tokens \(\[CLS\] and \[SEP\]\); use at least 3"):
        resolve(RunConfig(max_seq_length=2))
    assert resolve(RunConfig(max_seq_length=3)).max_seq_length == 3


def test_a_label_column_read_as_the_text_is_refused():
    """It trained and scored 1.0: the model read its answer."""
    for flags, column in (({"text_column": "label"}, "text"), ({"text_pair_column": "label"}, "text_pair")):
        with pytest.raises(ConfigError, match=rf"--label_column 'label' is the --{column}_column too; the model would "
                                              "read its answer"):
            resolve(RunConfig(**flags))


def test_unknown_cli_flag_suggests_nearest():
    with pytest.raises(ConfigError, match="did you mean 'num_train_epochs'"):
        parse_args(["--num_train_epoch", "3"])


@pytest.mark.parametrize("mode", sorted(MODES))
def test_recipe_yaml_agrees_with_api_defaults(mode):
    """The recipe's per-mode YAML and the Python API's per-mode defaults describe the same run."""
    from_recipe = resolve(parse_args(["--mode", mode], default_config_dir=RECIPE_CONFIGS))
    from_api = resolve(RunConfig(mode=mode))
    assert from_recipe == from_api


def test_every_mode_has_a_recipe_config_that_agrees_with_its_defaults():
    """The recipe's YAMLs restate the per-mode defaults for readers; a YAML that disagrees with the code fails."""
    folder = ROOT / "recipes" / "configs" / "sentiment"
    assert {p.stem for p in folder.glob("*.yaml")} == set(MODES)
    for mode in MODES:
        recipe = yaml.safe_load((folder / f"{mode}.yaml").read_text())
        assert recipe["mode"] == mode
        resolved = resolve(RunConfig(mode=mode)).to_dict()
        for key, value in recipe.items():
            assert resolved[key] == value, f"{mode}.yaml sets {key}={value!r}; the code's default is {resolved[key]!r}"
        for key, value in MODES[mode].defaults.items():
            assert resolved[key] == value


def test_explicit_value_beats_mode_default():
    assert resolve(RunConfig(mode="scratch", learning_rate=1e-5)).learning_rate == 1e-5


def test_the_settings_a_mode_never_reads_are_named():
    assert unused_settings(resolve(RunConfig(mode="probe", learning_rate=1e-3, num_train_epochs=5, lora_r=4))) == [
        "--learning_rate 0.001", "--num_train_epochs 5", "--lora_r 4"]
    assert unused_settings(resolve(RunConfig(mode="finetune", pair_iterations=3))) == ["--pair_iterations 3"]
    assert unused_settings(resolve(RunConfig(mode="probe", weight_decay=0.1, warmup_ratio=0.2))) == [
        "--weight_decay 0.1", "--warmup_ratio 0.2"]  # the probe has no optimizer loop
    # each mode's own defaults, and the flags that apply to it, are never named
    assert all(unused_settings(resolve(RunConfig(mode=m))) == [] for m in MODES)
    assert unused_settings(resolve(RunConfig(mode="lora", lora_r=4, learning_rate=1e-3))) == []


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        resolve(RunConfig(per_device_train_batch_size=0, num_train_epochs=-1, learning_rate=0, report_to="tensorbord"))
    message = str(e.value)
    for part in ("per_device_train_batch_size", "num_train_epochs", "learning_rate", "did you mean 'tensorboard'"):
        assert part in message


def test_a_seed_outside_numpy_s_range_is_refused_before_anything_loads():
    """A negative seed passed torch's seeding and stopped in numpy's, with a traceback, after the model had loaded."""
    from xfer_nlp.grid import parse_seeds

    for seed in (-1, 2**32, "3"):  # a notebook's text: the comparison itself had raised a TypeError
        with pytest.raises(ConfigError, match=rf"--seed must be an integer from 0 to 4294967295, got {seed!r}\."):
            resolve(RunConfig(seed=seed))
    with pytest.raises(ConfigError, match=r"--max_seq_length must be a positive integer, got '64'\."):
        resolve(RunConfig(max_seq_length="64"))
    assert resolve(RunConfig(seed=2**32 - 1)).seed == 2**32 - 1
    with pytest.raises(ConfigError, match=r"--seeds must be integers from 0 to 4294967295, got '0,-1'\."):
        parse_seeds("0,-1")


def test_a_named_tracker_that_is_not_installed_is_refused(monkeypatch):
    """Accelerate drops a named tracker whose package is missing without a word; the run would log nowhere."""
    from xfer_nlp import config

    monkeypatch.setitem(config.TRACKER_AVAILABLE, "wandb", lambda: False)
    with pytest.raises(ConfigError, match=r"--report_to wandb: the wandb package is not installed\. Install it "
                                          r"\(pip install wandb\)"):
        resolve(RunConfig(report_to="tensorboard,wandb"))
    assert resolve(RunConfig(report_to="tensorboard")).trackers == ["tensorboard"]  # installed: the dev extra
    assert resolve(RunConfig(report_to="all")).trackers == ["all"]  # all: whichever are installed


def test_unknown_mode():
    with pytest.raises(ConfigError, match="did you mean 'finetune'"):
        resolve(RunConfig(mode="fintune"))


def test_every_field_has_help():
    import dataclasses

    from xfer_nlp.config import ArgumentParser

    helps = [f.metadata.get("help") for f in dataclasses.fields(RunConfig)]
    assert all(helps) and len(set(helps)) == len(helps), "every field has help of its own"
    text = " ".join(ArgumentParser(RunConfig).format_help().split())
    for f in dataclasses.fields(RunConfig):
        assert f"--{f.name}" in text and " ".join(f.metadata["help"].split())[:40] in text, f.name


def test_token_never_saved():
    assert RunConfig(hub_token="hf_secret").to_dict()["hub_token"] is None


def test_auto_precision_follows_the_gpu_measurement(monkeypatch, tiny_model_dir, tmp_path):
    """On a bf16 GPU, auto keeps small encoders in fp32 (their steps are launch-bound: bf16's casts only add
    launches) and gives bf16 from bert-base's size up (benchmarks/precision.py on an H100)."""
    import torch
    from transformers import BertConfig

    from xfer_nlp.precision import GPU_BF16_MIN_PARAMS, encoder_parameters, resolve_precision
    from xfer_nlp.config import EMBEDDED_MODEL

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    base = tmp_path / "bert-base"
    BertConfig().save_pretrained(base)  # a config alone: counted on the meta device, no weights needed
    assert encoder_parameters(str(base)) == 109_482_240
    assert encoder_parameters(EMBEDDED_MODEL) < GPU_BF16_MIN_PARAMS <= encoder_parameters(str(base))
    assert resolve_precision("auto", "finetune", str(base)) == "bf16"
    assert resolve_precision("auto", "finetune", EMBEDDED_MODEL) == "no"
    assert resolve_precision("auto", "scratch", str(tiny_model_dir)) == "no"
    assert resolve_precision("auto", "probe", str(base)) == "no"
    assert resolve_precision("fp16", "finetune", str(tiny_model_dir)) == "fp16"  # an explicit choice stands
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # so does `accelerate launch --mixed_precision`
    assert resolve_precision("auto", "finetune", EMBEDDED_MODEL) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert resolve_precision("auto", "finetune", str(base)) == "no"  # a GPU without bf16 (V100, T4): fp32
