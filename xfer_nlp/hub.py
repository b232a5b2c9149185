"""The exported run folder: model files, results.json, resolved config and model card; and pushing it to the Hub."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import schedules
from .config import repo_id_problem
from .modes import EMBEDDED_MODEL, MODES, resolve_model_path
from .errors import PushError, XferError
from .runfolder import (CARD, CONFIG, CONFUSION, CURVES, RESULTS, RunRecord, as_open_makes, read_results, unfinished,
                        write_json)

logger = logging.getLogger(__name__)

# Where the embedded encoder comes from on the Hub, so the card links its base model.
HUB_IDS = {EMBEDDED_MODEL: "sentence-transformers/all-MiniLM-L6-v2"}


def base_model_id(model: str) -> str | None:
    """The encoder's Hub id, where it has one (a local folder has none)."""
    hub_id = HUB_IDS.get(model, model)
    return None if "/" not in hub_id or Path(hub_id).exists() or hub_id.startswith((".", "/", "~")) else hub_id


LICENSE_ID = re.compile(r"[A-Za-z0-9][\w.+-]{0,63}")  # the Hub's license ids: apache-2.0, mit, cc-by-nc-4.0, other


def base_license(model: str) -> dict:
    """The license the starting model's card declares (ModelCardData's license, license_name, license_link), read
    from its folder's README.md or, for a Hub id, the cached one (nothing is fetched); {} where none is declared or
    readable. A fine-tuned model is a derivative of its base, so the card carries the base's terms rather than
    claiming its own."""
    from huggingface_hub import metadata_load, try_to_load_from_cache

    path = Path(resolve_model_path(model)).expanduser()
    card = path / CARD if path.is_dir() else None
    if card is None and base_model_id(model):
        cached = try_to_load_from_cache(model, CARD)
        card = Path(cached) if isinstance(cached, str) else None
    try:
        meta = metadata_load(card) if card is not None and card.is_file() else None
    except (ValueError, OSError, yaml.YAMLError):  # a damaged card: no license read, nothing else depends on it
        return {}
    declared = (meta or {}).get("license")
    if not (isinstance(declared, str) and LICENSE_ID.fullmatch(declared)):
        return {}
    named = {k: meta[k] for k in ("license_name", "license_link")
             if declared == "other" and isinstance(meta.get(k), str) and len(meta[k]) < 300}
    return {"license": declared, **named}


def dataset_id(dataset: str) -> str | None:
    """The Hub id of a registry dataset or of a dataset named by its Hub id; None for local files."""
    from .data import REGISTRY

    if dataset in REGISTRY:
        return REGISTRY[dataset].hub_id
    return base_model_id(dataset)


def dataset_label(dataset: str) -> str:
    """How the card names the data: a registry name or Hub id as it is, local data by its file's or folder's name
    (its path means nothing on the Hub, where the model-index field expects a dataset id)."""
    from .data import REGISTRY

    return dataset if dataset in REGISTRY or dataset_id(dataset) else Path(dataset).name or dataset


def needs_remote_code(record: RunRecord) -> bool:
    return record.architecture == "XferPooledForSequenceClassification"


def _reading(record: RunRecord):
    """How the run read texts (results.json's `reading`; a run from before it was recorded read their head)."""
    from .batches import Reading, saved_reading

    return saved_reading(record.reading) or Reading(record.config.get("max_seq_length", 128))


def usage_snippet(record: RunRecord, model_id: str) -> str:
    remote = needs_remote_code(record)
    # truncation as the run read texts (their head; see the card's reading note otherwise): without it a text
    # longer than the position embeddings ends pipeline() in a RuntimeError (tensor sizes that do not match)
    reading = _reading(record)
    flag = f", truncation=True, max_length={reading.max_length}" + (", trust_remote_code=True" if remote else "")
    why = ("# The mean/cls-pooling head is defined in this repository's modeling.py; transformers runs it only\n"
           "# with trust_remote_code=True.\n") if remote else ""
    example = ('{"text": "A man is playing a guitar.", "text_pair": "Someone is making music."}' if reading.pairs
               else '"a gripping, beautifully made film"')  # pipeline() takes a pair as this dict
    since = "4.57 or 5.x" if record.transformers_min.startswith("4.") else (
        f"{record.transformers_min} or later; transformers 4 lacks this model type")
    return (f"{why}# Needs only transformers ({since}); xfer_nlp need not be installed.\n"
            "from transformers import pipeline\n\n"
            f'classifier = pipeline("text-classification", model="{model_id}"{flag})\n'
            f'print(classifier({example}))')


def _reading_note(record: RunRecord) -> str:
    """How the model read a text longer than it can take, and what a plain pipeline() does instead."""
    reading = _reading(record)
    n = reading.max_length
    if reading.pairs:
        return (f"It reads {reading.describe()}; `pipeline(..., truncation=True, max_length={n})`, given "
                '`{"text": ..., "text_pair": ...}`, reads the same.')
    if reading.truncation == "head" and not reading.chunk_stride:
        return (f"It reads {reading.describe()} of a text; `pipeline(..., truncation=True, max_length={n})` reads "
                "the same.")
    return (f"It was trained and evaluated reading {reading.describe()} of a longer text. A plain `pipeline()` "
            f"keeps only a text's first tokens (with `truncation=True, max_length={n}`, the first {n}); to read texts "
            "as the reported results did, use `xfer_nlp.predict(MODEL, texts)` or `xfer-nlp predict`, which apply "
            "this setting from results.json.")


def _per_class_table(record: RunRecord) -> str:
    """Precision / recall / F1 and support of each label on each scored split, by name (results.json keys them by
    class id): accuracy and macro-F1 alone hide which class a model gets wrong."""
    splits = [(split, m["per_class"]) for split, m in record.metrics.items() if m.get("per_class")]
    if not splits:
        return ""
    lines = [f"| label | {' | '.join(split for split, _ in splits)} |", "|---|" + "---|" * len(splits)]
    for i, name in enumerate(record.label_names):  # the metrics module scores every class id, seen or not
        cells = (classes[str(i)] for _, classes in splits)
        lines.append(f"| {name} | " + " | ".join(
            f"{c['precision']:.3f} / {c['recall']:.3f} / {c['f1']:.3f} ({c['support']:,})" for c in cells) + " |")
    return "Per class: precision / recall / F1 (examples).\n\n" + "\n".join(lines) + "\n\n"


def model_card(record: RunRecord, comparison: str | None = None) -> ModelCard:
    """The card for one run; `comparison` is the summary table of the compare grid the run belonged to."""
    cfg = record.config
    dataset, mode = dataset_label(record.dataset), record.mode
    spec = MODES[mode]
    data_id = dataset_id(record.dataset)
    evals = []
    for split, m in record.metrics.items():
        for metric, value in m.items():
            if metric not in ("accuracy", "macro_f1"):
                continue
            f1 = metric == "macro_f1"
            evals.append(EvalResult(
                task_type="text-classification", task_name="Text Classification", dataset_type=data_id or dataset,
                dataset_name=dataset, dataset_split=split, metric_type="f1" if f1 else "accuracy",
                metric_name="Macro F1" if f1 else "Accuracy", metric_args={"average": "macro"} if f1 else None,
                metric_value=round(value, 4)))
    declared = base_license(record.model)
    terms = (f"License: {declared['license']}, as the starting model `{record.model}` declares; the training "
             "data's terms apply too." if declared else
             f"License: none stated. The starting model `{record.model}` declares none that could be read; choose "
             "one that its license and the training data's terms allow, and add it to this card's metadata.")
    data = ModelCardData(
        base_model=base_model_id(record.model) if spec.pretrained else None, datasets=[data_id] if data_id else None,
        library_name="transformers", pipeline_tag="text-classification", **declared,
        tags=["xfer_nlp", mode, "text-classification"], model_name=Path(cfg["output_dir"]).name, eval_results=evals)
    rows = "\n".join(f"| {split} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} |" for split, m in record.metrics.items())
    per_class = _per_class_table(record)
    hyper = {k: cfg[k] for k in spec.card_settings if cfg.get(k) is not None}
    if (record.schedule or {}).get("plan"):  # the small-data rule may have raised the epochs above
        hyper["optimizer_steps"] = f"{record.schedule['optimizer_steps']} ({record.schedule['plan']})"
    if record.pairs:
        hyper["pair_iterations"] = f"{record.pairs['rounds']} ({record.pairs['pairs']:,} pairs; {record.pairs['rule']})"
    if spec.fitted_head:
        hyper["probe_C (chosen)"] = (record.probe or {}).get("C")
        chosen = ("The encoder was tuned on pairs for the steps set in advance (no choice on validation); the head's "
                  "regularisation strength C" if spec.loop else "The head's regularisation strength C")
        chosen += " was chosen on the validation split"
    elif record.best_step == 0:
        chosen = ("The starting classifier's weights were kept (step 0: no training step improved on them) as the "
                  "best on the validation split")
    else:
        chosen = (f"The weights of epoch {record.best_epoch} (step {record.best_step}) were kept as "
                  "the best on the validation split")
    chosen += (", so validation scores are optimistic; the test split was scored once, with that choice."
               if "test" in record.metrics else ", so its scores are optimistic; this dataset has no test split.")
    # record.normalize is what the exported head does; results written before it existed leave it to the mode
    unit_length = (record.normalize or spec.normalize) and record.pooling != "pooler"
    normalised = ", each sentence vector scaled to unit length" if unit_length else ""
    head = {"keep": f" Head: `{record.model}`'s own, kept for the same labels (`--head_init keep`) and trained on.",
            "probe": " Head: first fitted as the probe's on the frozen encoder (`--head_init probe`), then trained on."
            }.get(cfg.get("head_init"), "")
    # The mode's sentence says what trains; these two flags change which layers did, and from what.
    layers = ""
    if cfg.get("freeze_layers") is not None:
        frozen = schedules.frozen_phrase(cfg["freeze_layers"])
        layers = f" {frozen[0].upper()}{frozen[1:]} were kept frozen (`--freeze_layers {cfg['freeze_layers']}`)."
    if cfg.get("reinit_layers"):
        layers += (f" The top {cfg['reinit_layers']} encoder layer(s) were re-initialised before training "
                   f"(`--reinit_layers {cfg['reinit_layers']}`).")
    # How the splits were made and what was dropped or repeated: a reader weighs the scores by it.
    data_notes = f"Data: {'; '.join(record.data_notes)}.\n" if record.data_notes else ""
    # A probe that read its features from the cache took seconds that leave out the encoding, most of a cold run's.
    hits = (record.probe or {}).get("feature_cache_hit") or {}
    cached = " (its features read from the feature cache, so without encoding them)" if hits.get("train") else ""
    # The run's plots, uploaded beside the card (record.files), shown in it where the Hub renders the card.
    shown = [f"![{alt}]({name})" for name, alt in ((CURVES, "training loss and validation by step"),
                                                   (CONFUSION, "confusion matrix")) if name in (record.files or [])]
    figures = "\n\n".join(shown) + "\n" if shown else ""
    compared = ("## Comparison\n\nThis run is one cell of an `xfer-nlp compare` grid on the same data; the other "
                f"approaches scored:\n\n{comparison}\n") if comparison else ""
    body = f"""
# {Path(cfg["output_dir"]).name}

A text classifier for **{dataset}** ({", ".join(record.label_names)}), trained with
[xfer_nlp](https://pypi.org/project/xfer-nlp/) in mode **{mode}**: {spec.card}.{layers}
Encoder: `{record.model}` ({record.pooling} pooling{normalised}).{head}
{_reading_note(record)}

## Results

| split | accuracy | macro-F1 |
|---|---|---|
{rows}

{per_class}{chosen}
Trained on {record.train_samples} examples in {record.train_seconds:.1f} s{cached} on {record.hardware};
{record.trainable_params:,} of {record.total_params:,} parameters trained; peak memory {record.peak_memory_mb:.0f} MB.
{data_notes}
{figures}
## How to use

```python
{usage_snippet(record, cfg.get("hub_model_id") or cfg["output_dir"])}
```

## Training hyperparameters

{chr(10).join(f"- {k}: {v}" for k, v in hyper.items())}

{compared}
## Intended use and limitations

Classifying short English texts like those of {dataset}. Accuracy was measured on the splits above only; expect
lower accuracy on text from another domain, on other languages, and on inputs longer than {cfg["max_seq_length"]}
tokens (they are truncated). Labels inherit the biases of the training data; review errors before relying on
predictions for decisions about people.

{terms}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _portable_tokenizer_config(path: Path, tokenizer) -> None:
    """The export's tokenizer as transformers 4 reads it too, not only the transformers 5 that wrote it (measured
    with 4.57: benchmarks/RESULTS.md, "Exports in transformers 4"). 5 names a tokenizer that is only tokenizer.json
    `TokenizersBackend` (ModernBERT's), a class 4 does not have: `PreTrainedTokenizerFast` is the name both read.
    And 5 does not save `model_input_names`, so 4 fed token_type_ids to a DistilBERT or MPNet whose tokenizer makes
    them (a BERT tokenizer beside the model) and its forward() refused them: the inputs the model takes are written."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = list(tokenizer.model_input_names)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def save_outputs(output_dir: Path, model, tokenizer, record: RunRecord) -> None:
    """Everything a run leaves behind, loadable by `pipeline("text-classification", model=output_dir)`.

    The model and tokenizer are written into a temporary folder first, so the names of the files they consist of
    are known exactly: results.json lists them, and `push` uploads that list and nothing else from the folder.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / ".export.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)  # a pooled head's modeling.py and auto_map come with it (register_for_auto_class)
        tokenizer.save_pretrained(staging)
        _portable_tokenizer_config(staging / "tokenizer_config.json", tokenizer)
        as_open_makes(*staging.glob("*.safetensors"))
        exported = sorted(p.name for p in staging.iterdir() if p.is_file())
        for name in exported:
            os.replace(staging / name, output_dir / name)
    finally:  # also after a failed write (a full disk): its half-written files would hold the space
        shutil.rmtree(staging, ignore_errors=True)
    adapter = sorted(f"adapter/{p.name}" for p in (output_dir / "adapter").glob("*") if p.is_file()) \
        if record.config.get("save_lora_adapter") else []
    plot = [name for name in (CONFUSION, CURVES) if (output_dir / name).is_file()]
    # predictions.jsonl stays local: it holds the evaluation texts, and push uploads no data.
    record = dataclasses.replace(record, files=exported + adapter + plot + [CONFIG, CARD, RESULTS])
    (output_dir / CONFIG).write_text(yaml.safe_dump(record.config, sort_keys=False), encoding="utf-8")
    model_card(record).save(output_dir / CARD)
    write_json(output_dir / RESULTS, record.to_dict())  # last: its presence marks a finished run


def _files_to_push(output_dir: Path, record: RunRecord) -> list[Path]:
    """The files the run wrote (results.json lists them), each checked to be a plain file inside the folder."""
    names = record.files
    if not isinstance(names, list) or not names:
        raise PushError(f"'{output_dir}/results.json' does not list the files the run wrote (it was made by an older "
                        "xfer_nlp); re-run it with --overwrite_output_dir, then push.")
    root = output_dir.resolve()
    files = []
    for name in names:
        path = (output_dir / str(name))
        if not path.is_file() or path.is_symlink() or root not in path.resolve().parents:
            raise PushError(f"'{output_dir}' lacks {name}, which its run wrote (or it is no plain file inside the "
                            "folder). Re-run with --overwrite_output_dir, then push.")
        files.append(path)
    return files


def push(output_dir: str | Path, hub_model_id: str | None = None, private: bool = False,
         token: str | None = None) -> str:
    """Upload a finished run's own files (never anything else in the folder); returns the repo URL.

    Local files are only read. The card's usage snippet is rewritten for the id pushed to.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    output_dir = Path(output_dir).expanduser()
    if not (output_dir / RESULTS).is_file():
        raise PushError(unfinished(output_dir)
                        or f"'{output_dir}' holds no finished run (no results.json); train first, then push.")
    try:
        record = read_results(output_dir)
    except XferError as e:
        raise PushError(str(e)) from None
    if problem := repo_id_problem(hub_model_id, output_dir):
        raise PushError(problem)
    files = _files_to_push(output_dir, record)
    api = HfApi(token=token)
    retry = shlex.join(["xfer-nlp", "push", str(output_dir), "--hub_model_id", hub_model_id or "<user>/<name>"])
    try:
        if hub_model_id is None:
            hub_model_id = f"{api.whoami()['name']}/{output_dir.name}"
        repo = api.create_repo(hub_model_id, private=private, exist_ok=True, repo_type="model")
        operations = []
        for path in files:
            content = path.read_bytes()
            if path.name == CARD and path.parent == output_dir:
                content = _card_for(content.decode("utf-8"), record, repo.repo_id).encode("utf-8")
            operations.append(CommitOperationAdd(path.relative_to(output_dir).as_posix(), content))
        api.create_commit(repo_id=repo.repo_id, operations=operations, repo_type="model",
                          commit_message="Upload model trained with xfer_nlp")
    except Exception as e:  # HTTP errors, refused connections (httpx), timeouts: all mean "the upload failed"
        msg = str(e).replace(token, "***") if token else str(e)
        msg = f"{type(e).__name__}: {(msg.splitlines() or [''])[0][:300]}"
        raise PushError(f"Pushing '{output_dir}' to the Hub failed ({msg}). Every local output "
                        f"is intact; retry just the upload with: {retry}") from None
    return repo.url if hasattr(repo, "url") else str(repo)


def _card_for(card: str, record: RunRecord, repo_id: str) -> str:
    """The card with its usage snippet naming `repo_id` (it named the id or the folder the run was trained into)."""
    trained_as = record.config.get("hub_model_id") or record.config["output_dir"]
    return card.replace(usage_snippet(record, trained_as), usage_snippet(record, repo_id))
