"""The exported run folder: model files, results.json, resolved config and model card; and pushing it to the Hub."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .config import EMBEDDED_MODEL
from .errors import XferError

logger = logging.getLogger(__name__)

MODE_DESCRIPTIONS = {
    "probe": "a linear probe: the pretrained encoder is frozen and only a logistic-regression head was fitted on "
             "its sentence features",
    "finetune": "full fine-tuning: every weight of the pretrained encoder and the new head was trained",
    "scratch": "training from scratch: the encoder's architecture with randomly initialised weights",
    "lora": "LoRA: low-rank adapters on the encoder (merged into these weights) and the head were trained",
}


# Where the embedded encoder comes from on the Hub, so the card links its base model.
HUB_IDS = {EMBEDDED_MODEL: "sentence-transformers/all-MiniLM-L6-v2"}


class PushError(XferError):
    """Uploading to the Hub failed; the local outputs are intact."""


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def model_card(results: dict, comparison: str | None = None) -> ModelCard:
    """The card for one run; `comparison` is the summary table of the compare grid the run belonged to."""
    cfg = results["config"]
    dataset = results["dataset"]
    evals = [EvalResult(task_type="text-classification", task_name="Text Classification", dataset_type=dataset,
                        dataset_name=dataset, dataset_split=split, metric_type=metric, metric_name=metric,
                        metric_value=round(value, 4))
             for split, m in results["metrics"].items() for metric, value in m.items()]
    base = HUB_IDS.get(results["model"], results["model"])
    data = ModelCardData(
        base_model=None if results["mode"] == "scratch" or "/" not in base or Path(base).exists() else base,
        library_name="transformers", pipeline_tag="text-classification", license="apache-2.0",
        tags=["xfer_nlp", results["mode"], "text-classification"], model_name=Path(cfg["output_dir"]).name,
        eval_results=evals)
    rows = "\n".join(f"| {split} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |" for split, m in results["metrics"].items())
    needs_import = results.get("architecture") == "XferBertForSequenceClassification"
    load = ("import xfer_nlp  # registers the mean/cls-pooling BERT head with transformers' Auto classes\n"
            if needs_import else "") + "from transformers import pipeline\n\n" \
        f'classifier = pipeline("text-classification", model="{cfg.get("hub_model_id") or cfg["output_dir"]}")\n' \
        'print(classifier("a gripping, beautifully made film"))'
    hyper = {k: cfg[k] for k in ("learning_rate", "num_train_epochs", "per_device_train_batch_size",
                                 "gradient_accumulation_steps", "weight_decay", "warmup_ratio", "max_seq_length",
                                 "pooling", "seed", "mixed_precision", "max_train_samples") if cfg.get(k) is not None}
    if results["mode"] == "lora":
        hyper.update({k: cfg[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")})
    if results["mode"] == "probe":
        hyper["probe_C"] = results.get("probe", {}).get("C")
    compared = ("## Comparison\n\nThis run is one cell of an `xfer-nlp compare` grid on the same data; the other "
                f"approaches scored:\n\n{comparison}\n") if comparison else ""
    body = f"""
# {Path(cfg["output_dir"]).name}

A text classifier for **{dataset}** ({", ".join(results["label_names"])}), trained with
[xfer_nlp](https://pypi.org/project/xfer-nlp/) in mode **{results["mode"]}**: {MODE_DESCRIPTIONS[results["mode"]]}.
Encoder: `{results["model"]}` ({results.get("pooling")} pooling).

## Results

| split | accuracy | macro-F1 |
|---|---|---|
{rows}

Trained on {results["train_samples"]} examples in {results["train_seconds"]:.1f} s on {results["hardware"]};
{results["trainable_params"]:,} of {results["total_params"]:,} parameters trained; peak memory {results["peak_memory_mb"]:.0f} MB.

## How to use

```python
{load}
```

## Training hyperparameters

{chr(10).join(f"- {k}: {v}" for k, v in hyper.items())}

{compared}
## Intended use and limitations

Classifying short English texts like those of {dataset}. Accuracy was measured on the splits above only; expect
lower accuracy on text from another domain, on other languages, and on inputs longer than {cfg["max_seq_length"]}
tokens (they are truncated). Labels inherit the biases of the training data; review errors before relying on
predictions for decisions about people.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def save_outputs(output_dir: Path, model, tokenizer, results: dict) -> None:
    """Everything a run leaves behind, loadable by `pipeline("text-classification", model=output_dir)`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "config_xfer.yaml").write_text(yaml.safe_dump(results["config"], sort_keys=False), encoding="utf-8")
    model_card(results).save(output_dir / "README.md")
    write_json(output_dir / "results.json", results)  # last: its presence marks a finished run


def push(output_dir: str | Path, hub_model_id: str | None = None, private: bool = False,
         token: str | None = None) -> str:
    """Upload a finished run folder; returns the repo URL. Local files are only read."""
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    if not (output_dir / "results.json").is_file():
        raise PushError(f"'{output_dir}' holds no finished run (no results.json); train first, then push.")
    api = HfApi(token=token)
    retry = f"xfer-nlp push {output_dir} --hub_model_id {hub_model_id or '<user>/<name>'}"
    try:
        if hub_model_id is None:
            hub_model_id = f"{api.whoami()['name']}/{output_dir.name}"
        repo = api.create_repo(hub_model_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo.repo_id, folder_path=output_dir, repo_type="model",
                          ignore_patterns=["checkpoints/*", "*.tmp", "logs/*"],
                          commit_message="Upload model trained with xfer_nlp")
    except Exception as e:  # HTTP errors, refused connections (httpx), timeouts: all mean "the upload failed"
        msg = str(e).replace(token, "***") if token else str(e)
        msg = f"{type(e).__name__}: {(msg.splitlines() or [''])[0][:300]}"
        raise PushError(f"Pushing '{output_dir}' to the Hub failed ({msg}). Every local output "
                        f"is intact; retry just the upload with: {retry}") from None
    return repo.url if hasattr(repo, "url") else str(repo)
