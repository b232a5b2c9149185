"""Every encoder family through every mode, and each export loaded where xfer_nlp cannot be imported.

Each family's model is a tiny random one built from its config (no download). The exports are loaded by
`pipeline()` in a separate Python process in which `import xfer_nlp` fails, with `trust_remote_code=True` only
where the model card says it is needed, and must reproduce the run's validation accuracy exactly: with this
environment's transformers 5, and again with transformers 4.57 (installed beside it by `make test`), as on a
machine that has not moved to 5, for every family that transformers 4 has (Family.transformers).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import launch_env, save_tiny_encoder, tiny_configs
from safetensors.torch import load_file

import xfer_nlp
from xfer_nlp.families import BY_TYPE
from test_distributed import launch

MODES = [("probe", {}), ("finetune", {}), ("scratch", {}), ("lora", {}),
         ("finetune", {"gradual_unfreezing": True, "layer_lr_decay": 0.8, "freeze_layers": 1, "reinit_layers": 1,
                       "unfreeze_interval": 0.5}),
         ("probe", {"pooling": "mean"}), ("finetune", {"pooling": "cls"}), ("contrastive", {"pair_iterations": 2})]

# Runs in a fresh interpreter: xfer_nlp is made unimportable before anything else happens.
LOADER = r"""
import json, sys
sys.modules["xfer_nlp"] = None  # `import xfer_nlp` now raises ImportError, as where it is not installed
try:
    import xfer_nlp
    raise SystemExit("xfer_nlp was importable")
except ImportError:
    pass
import transformers
from transformers import pipeline

rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
out = {"transformers": transformers.__version__}
for folder in sys.argv[2:]:
    card = open(folder + "/README.md", encoding="utf-8").read()
    remote = "trust_remote_code=True" in card
    clf = pipeline("text-classification", model=folder, device=-1, trust_remote_code=remote)
    labels = [p["label"] for p in clf([r["text"] for r in rows], batch_size=8)]
    out[folder] = {"remote": remote, "accuracy": sum(l == str(r["label"]) for l, r in zip(labels, rows)) / len(rows)}
print(json.dumps(out))
"""


# `make test` installs transformers 4 here (the Makefile's TRANSFORMERS4), beside the venv's own 5.
TRANSFORMERS4 = Path(sys.prefix) / "transformers4"


def load_elsewhere(data: Path, folders: list[Path], transformers4: bool = False) -> dict:
    """LOADER's scores, in a process where xfer_nlp cannot be imported (and where transformers is version 4)."""
    env = launch_env()
    if transformers4:
        assert (TRANSFORMERS4 / "transformers").is_dir(), f"no transformers 4 in {TRANSFORMERS4}: run `make test`"
        env["PYTHONPATH"] = os.pathsep.join([str(TRANSFORMERS4), env.get("PYTHONPATH", "")])
    loaded = subprocess.run([sys.executable, "-c", LOADER, str(data), *map(str, folders)], capture_output=True,
                            text=True, timeout=600, env=env)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    scores = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert scores.pop("transformers").startswith("4." if transformers4 else "5.")
    return scores


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: save_tiny_encoder(config, root / name) for name, config in tiny_configs().items()}


@pytest.mark.parametrize("family", list(tiny_configs()))
def test_every_mode_exports_a_model_stock_transformers_loads(family, encoders, tiny_data_dir, tmp_path):
    runs = []
    for i, (mode, extra) in enumerate(MODES):
        result = xfer_nlp.run(mode=mode, model_name_or_path=str(encoders[family]), dataset_name=str(tiny_data_dir),
                              output_dir=str(tmp_path / f"{mode}-{i}"), max_seq_length=32, seed=0,
                              per_device_train_batch_size=16, feature_cache_dir=str(tmp_path / "features"),
                              **({} if mode == "probe" else {"num_train_epochs": 3, "learning_rate": 1e-3}), **extra)
        runs.append((mode, extra, result))
    encoder = load_file(encoders[family] / "model.safetensors")
    for (_, extra, result), body in ((runs[0], BY_TYPE[family].body), (runs[5], "encoder")):
        after = load_file(result.output_dir / "model.safetensors")
        for name, tensor in encoder.items():  # a probe moves no encoder weight, in either head
            if not name.startswith("pooler."):
                assert torch.equal(after[f"{body}.{name}"], tensor), f"probe {extra} moved {name}"
    assert max(runs[i][2].metrics["validation"]["accuracy"] for i in (0, 5)) >= 0.6, "a probe beats chance"
    folders = [r.output_dir for _, _, r in runs]
    scores = load_elsewhere(tiny_data_dir / "validation.jsonl", folders)
    # transformers 4 reads the same files alike: what it could not read (a tokenizer class only 5 has, inputs the
    # model's forward() refuses) was a TypeError or ValueError in pipeline(); a family it lacks is left to 5
    if BY_TYPE[family].transformers.startswith("4."):
        assert load_elsewhere(tiny_data_dir / "validation.jsonl", folders, transformers4=True) == scores
    since = BY_TYPE[family].transformers
    needs = "4.57 or 5.x" if since.startswith("4.") else f"{since} or later; transformers 4 lacks this model type"
    for mode, extra, result in runs:
        assert f"# Needs only transformers ({needs});" in (result.output_dir / "README.md").read_text(), (mode, extra)
        got = scores[str(result.output_dir)]
        pooled = result.results["pooling"] in ("mean", "cls")
        assert got["remote"] == pooled, f"{mode} {extra}: remote code needed only for a pooled head"
        assert result.results["architecture"] == ("XferPooledForSequenceClassification" if pooled else
                                                  f"{type_prefix(family)}ForSequenceClassification")
        assert got["accuracy"] == pytest.approx(result.metrics["validation"]["accuracy"], abs=1e-9), (mode, extra)


def type_prefix(family):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification._model_mapping[type(tiny_configs()[family])].__name__.split(
        "ForSequenceClassification")[0]


def test_schedule_reads_each_family_layers_and_head(encoders):
    """Gradual unfreezing's stages and freeze_layers land on each family's real layers, head first."""
    from xfer_nlp.config import RunConfig, resolve
    from xfer_nlp.modes import build

    for family, path in encoders.items():
        built = build(resolve(RunConfig(mode="finetune", model_name_or_path=str(path), freeze_layers=1)), ("a", "b"))
        lay = built.layout
        names = [n for n, _ in built.model.named_parameters()]
        head = {n for n in names if lay.depth(n) == 0}
        assert head and all(lay.is_head(n) or lay.is_top(n) for n in head), family
        assert any(lay.is_out(n) for n in head), family
        assert {lay.depth(n) for n in names} == set(range(lay.layers + 2)), family
        frozen = {n for n, p in built.model.named_parameters() if not p.requires_grad}
        assert frozen == {n for n in names if lay.depth(n) >= lay.layers}, family  # embeddings + the bottom layer


def test_lp_ft_starts_from_the_probe_s_fitted_head_in_every_family_s_head(encoders, tiny_data_dir, tmp_path):
    """--head_init probe (LP-FT, the README's advice at 500 examples) writes the fitted head into whatever Linear
    each family's head ends in (RoBERTa's out_proj after its dense + tanh, DistilBERT's classifier after
    pre_classifier, ...): steps at a negligible learning rate score exactly what that head scored."""
    for family, path in encoders.items():
        for pooling in (None, "mean"):
            result = xfer_nlp.run(mode="finetune", head_init="probe", pooling=pooling, model_name_or_path=str(path),
                                  dataset_name=str(tiny_data_dir), output_dir=str(tmp_path / f"{family}-{pooling}"),
                                  max_seq_length=32, seed=0, max_steps=2, learning_rate=1e-12, weight_decay=0.0,
                                  mixed_precision="no", no_feature_cache=True)
            start = result.results["head_init"]["validation"]
            assert start > 0.5 and result.metrics["validation"]["accuracy"] == start, (family, pooling)


def test_each_family_s_encoder_blocks_are_found_for_fsdp_to_shard_one_by_one(encoders):
    """What an FSDP launch wraps (api._shard_by_block): one class per family, one module per encoder layer, and
    between them every weight of every layer; under LoRA's wrapper too."""
    from xfer_nlp.config import RunConfig, resolve
    from xfer_nlp.families import block_classes
    from xfer_nlp.modes import build

    for family, path in encoders.items():
        for mode in ("finetune", "lora"):
            built = build(resolve(RunConfig(mode=mode, model_name_or_path=str(path))), ("a", "b"))
            model, lay = built.model, built.layout
            (block,) = block_classes(model, lay)
            blocks = [(n, m) for n, m in model.named_modules() if type(m).__name__ == block]
            assert len(blocks) == lay.layers, (family, mode)  # ALBERT's: its layer groups, each run several times
            inside = {f"{n}.{p}" for n, m in blocks for p, _ in m.named_parameters()}
            layered = {n for n, _ in model.named_parameters() if lay.layer_index(n) is not None}
            assert layered and layered <= inside, (family, mode, sorted(layered - inside)[:3])


def test_deberta_v1_runs_in_fp32_under_auto_and_refuses_autocast_when_asked(encoders, tiny_data_dir, tmp_path,
                                                                            monkeypatch):
    """DeBERTa (v1) fails at its first forward under bf16 or fp16 autocast (transformers issue 35332): auto chose bf16
    for fine-tuning on a CPU with native bf16 and for predict, and the run ended in a RuntimeError mid-step."""
    from xfer_nlp import precision
    from xfer_nlp.errors import ConfigError

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # what auto chooses on AMX or AVX512-BF16 CPUs
    model = str(encoders["deberta"])
    assert precision.resolve_precision("auto", "finetune", str(encoders["deberta-v2"])) == "bf16"
    assert precision.resolve_precision("auto", "finetune", model) == "no"
    kw = dict(model_name_or_path=model, dataset_name=str(tiny_data_dir), max_seq_length=32, max_steps=2)
    for asked in ("bf16", "fp16"):
        with pytest.raises(ConfigError, match=rf"is a DeBERTa \(v1\) model, which fails under {asked} autocast.*"
                                              r"--mixed_precision no"):
            xfer_nlp.run(mode="finetune", mixed_precision=asked, output_dir=str(tmp_path / asked), **kw)
        assert not (tmp_path / asked).exists()  # refused before the folder is made
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # `accelerate launch --mixed_precision bf16`
    with pytest.raises(ConfigError, match="fails under bf16 autocast"):
        precision.resolve_precision("auto", "finetune", model)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    result = xfer_nlp.run(mode="finetune", output_dir=str(tmp_path / "auto"), **kw)
    assert result.results["mixed_precision"] == "no"
    monkeypatch.setattr(xfer_nlp.api, "bf16_is_native", lambda device: True)
    assert xfer_nlp.Predictor(result.output_dir, precision="auto").precision == "fp32"
    with pytest.raises(ConfigError, match="fails under bf16 autocast"):
        xfer_nlp.Predictor(result.output_dir, precision="bf16")


def test_unknown_architecture_is_one_clear_message(tmp_path):
    from transformers import GPT2Config, GPT2Model

    path = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(path)
    (path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    result = subprocess.run([sys.executable, "-m", "xfer_nlp.cli", "run", "--mode", "probe", "--model_name_or_path",
                             str(path), "--output_dir", str(tmp_path / "o")], capture_output=True, text=True,
                            timeout=300, env=launch_env())
    assert result.returncode == 2
    assert "'gpt2' model, which xfer_nlp does not know" in result.stderr and "RoBERTa / XLM-R" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_process_ddp_on_a_non_bert_family(encoders, tiny_data_dir, tmp_path):
    one, _ = launch(1, "finetune", tmp_path / "one", encoders["roberta"], tiny_data_dir, tmp_path,
                    "--per_device_train_batch_size", "16", "--num_train_epochs", "3", "--learning_rate", "1e-3",
                    "--gradual_unfreezing", "--unfreeze_interval", "0.5")
    two, _ = launch(2, "finetune", tmp_path / "two", encoders["roberta"], tiny_data_dir, tmp_path,
                    "--per_device_train_batch_size", "8", "--num_train_epochs", "3", "--learning_rate", "1e-3",
                    "--gradual_unfreezing", "--unfreeze_interval", "0.5")
    assert two["num_processes"] == 2 and two["architecture"] == "RobertaForSequenceClassification"
    assert [r["step"] for r in two["history"]] == [r["step"] for r in one["history"]]
    assert abs(two["metrics"]["validation"]["accuracy"] - one["metrics"]["validation"]["accuracy"]) <= 0.1
