"""The probe against its floor and its peer, in one process, one after the other.

    python benchmarks/probe.py --out benchmarks/results/probe.md

1. floor: one plain encoder pass (mean pooling, batches of 128 sorted by length, inference mode) over train +
   validation, the faster of two: the least any probe must spend, since the encoder must see every sentence once;
2. xfer_nlp `--mode probe`, cold feature cache: the whole `xfer_nlp.run` call (data, model, encode, fit, export);
3. the same again with the cache warm;
4. the peer: a transformers `Trainer` with the encoder frozen, training the stock [CLS]-pooler head
   (3 epochs, lr 1e-3, batch 32, dynamic padding), scored on validation;
5. xfer_nlp probe on mr and subj (no validation split: a seeded stratified 10% of train is held out).
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, publish

import xfer_nlp
from xfer_nlp.batches import eval_loader, make_collator, tokenize
from xfer_nlp.config import RunConfig, resolve
from xfer_nlp.data import load_text_data
from xfer_nlp.metrics import classification_metrics
from xfer_nlp.modes import resolve_model_path


def encoder_pass(splits, model_path: str) -> float:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where xfer_nlp's probe and the Trainer run too
    model = AutoModel.from_pretrained(model_path).eval().to(device)
    tokenized = tokenize(splits, tokenizer, 128)
    collator = make_collator(tokenizer, None, device)
    times = []
    for _ in range(2):  # the faster of two passes: the first also pays one-off warm-up costs
        start = time.perf_counter()
        with torch.inference_mode():
            for name in ("train", "validation"):
                for batch in eval_loader(tokenized[name], collator, 128):
                    batch.pop("labels")
                    batch = {k: v.to(device) for k, v in batch.items()}
                    hidden = model(**batch).last_hidden_state
                    mask = batch["attention_mask"].unsqueeze(-1)
                    _ = (hidden * mask).sum(1) / mask.sum(1)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def trainer_frozen(splits, model_path: str, workdir: str) -> tuple[float, float]:
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    for p in model.bert.parameters():
        p.requires_grad = False
    tokenized = splits.map(lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True)
    args = TrainingArguments(output_dir=workdir, num_train_epochs=3, learning_rate=1e-3,
                             per_device_train_batch_size=32, per_device_eval_batch_size=128, seed=42,
                             report_to=[], save_strategy="no", logging_steps=50, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=tokenized["train"], data_collator=DataCollatorWithPadding(
        tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    pred = trainer.predict(tokenized["validation"])
    accuracy = classification_metrics(np.argmax(pred.predictions, -1), pred.label_ids, 2)["accuracy"]
    return seconds, accuracy


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "probe.md"),
                        help="markdown file for the table")
    parser.add_argument("--skip_trainer", action="store_true", help="leave out the (slow) Trainer peer")
    parser.add_argument("--max_train_samples", type=int, default=None, help="smoke tests: train on fewer texts")
    args = parser.parse_args(argv)
    # Two feature caches and five runs' model folders, ~350 MB: gone when the report is written.
    with tempfile.TemporaryDirectory(prefix="xfer-probe-bench-") as work:
        publish(report(args, Path(work)), args.out)


def report(args, work: Path) -> str:
    """Runs every measurement with its files under `work` and returns the report's markdown."""
    model_path = resolve_model_path(xfer_nlp.config.EMBEDDED_MODEL)
    splits = load_text_data(resolve(RunConfig(dataset_name="sst2", max_train_samples=args.max_train_samples))).splits
    limit = {"max_train_samples": args.max_train_samples}

    floor = encoder_pass(splits, model_path)
    runs = {}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        result = xfer_nlp.run(mode="probe", dataset_name="sst2", output_dir=str(work / label),
                              feature_cache_dir=str(work / "features"), **limit)
        runs[label] = (time.perf_counter() - start, result)
    assert not any(runs["cold"][1].results["probe"]["feature_cache_hit"].values())
    assert all(runs["warm"][1].results["probe"]["feature_cache_hit"].values())
    peer = None if args.skip_trainer else trainer_frozen(splits, model_path, str(work / "trainer"))
    others = {name: xfer_nlp.run(mode="probe", dataset_name=name, output_dir=str(work / name),
                                 feature_cache_dir=str(work / "features"), **limit) for name in ("mr", "subj")}

    cold, warm = runs["cold"][0], runs["warm"][0]
    acc = runs["cold"][1].metrics["validation"]["accuracy"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, one process. Command: `python benchmarks/probe.py`.", "",
        "| sst2 (train 6,920, validation 872) | seconds | ratio | validation accuracy |", "|---|---|---|---|",
        f"| floor: one encoder pass over train + validation | {floor:.1f} | 1.00 | — |",
        f"| xfer_nlp probe, cold cache (whole `run()` call) | {cold:.1f} | {cold / floor:.2f} x floor | {acc:.4f} |",
        f"| xfer_nlp probe, warm cache (whole `run()` call) | {warm:.1f} | {warm / cold:.1%} of cold | "
        f"{runs['warm'][1].metrics['validation']['accuracy']:.4f} |",
    ]
    if peer:
        lines.append(f"| peer: `Trainer`, frozen encoder, [CLS]-pooler head, 3 epochs lr 1e-3 (training only) | "
                     f"{peer[0]:.1f} | {peer[0] / cold:.1f} x xfer_nlp cold | {peer[1]:.4f} |")
    details = runs["cold"][1].results["probe"]
    lines += ["", f"Cold run: encoding {details['encode_seconds']:.1f} s, head fit {details['fit_seconds']:.1f} s "
                  f"(C = {details['C']} chosen on validation).", "",
              "| data | train / held-out validation | validation accuracy | macro-F1 |", "|---|---|---|---|"]
    for name, r in others.items():
        lines.append(f"| {name} | {r.results['split_sizes']['train']} / {r.results['split_sizes']['validation']} | "
                     f"{r.metrics['validation']['accuracy']:.4f} | {r.metrics['validation']['macro_f1']:.4f} |")
    lines.append(f"\nPeak RSS of the benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
