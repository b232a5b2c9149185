"""The peer for contrastive mode: the setfit library, with its defaults, on the same encoder and the same subsets.

    pip install setfit          # a benchmark-only dependency (the `bench` extra), not a runtime one
    python benchmarks/setfit_peer.py --dataset_name sst2 --train_sizes 16,32,64 --seeds 0,1,2 --output_dir runs/small-sst2
    xfer-nlp report runs/small-sst2

Each cell takes exactly the stratified subset `xfer_nlp.run(max_train_samples=n, seed=s)` trains on (same data
loading, same validation split), trains `SetFitModel` from the embedded MiniLM with `setfit.Trainer` and its
default `TrainingArguments` (oversampled pairs, one epoch, batch 16, body lr 2e-5, logistic-regression head), and
writes a cell folder in compare's format (cell.json + results.json) under OUTPUT_DIR/runs, so `xfer-nlp report`
shows it as one more variant, "setfit (peer)". train_seconds time `trainer.train()` alone; scoring the validation
split after it is timed apart (validation_seconds), since an xfer_nlp run's seconds include it. Where the default
pair count would take hours on a small CPU, `--max_steps` caps the pair stage; the cap is recorded in the cell's
overrides and so in the table's label.
"""

import argparse
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from xfer_nlp.config import EMBEDDED_MODEL, RunConfig, resolve
from xfer_nlp.data import load_text_data
from xfer_nlp.metrics import classification_metrics
from xfer_nlp.modes import resolve_model_path
from xfer_nlp.precision import cpu_hardware
from xfer_nlp.report import write_report
from xfer_nlp.runfolder import RunRecord, write_json

LABEL = "setfit (peer)"


def run_cell(dataset: str, size: str, seed: int, out: Path, max_steps: int | None, data_dir: str | None) -> RunRecord:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    cfg = resolve(RunConfig(mode="probe", dataset_name=dataset, seed=seed, data_dir=data_dir,
                            max_train_samples=None if size == "all" else int(size), output_dir=str(out)))
    data = load_text_data(cfg)
    train = data.splits["train"]
    model = SetFitModel.from_pretrained(resolve_model_path(EMBEDDED_MODEL), labels=list(data.label_names))
    args = TrainingArguments(seed=seed, show_progress_bar=False, report_to="none", output_dir=str(out / "setfit"),
                             **({"max_steps": max_steps} if max_steps else {}))
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": train["text"],
                                                                               "label": train["label"]}))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    metrics, scoring = {}, {}
    for split in (s for s in data.splits if s != "train"):
        start = time.perf_counter()
        probs = model.predict_proba(data.splits[split]["text"], as_numpy=True)
        scoring[split] = round(time.perf_counter() - start, 2)
        metrics[split] = classification_metrics(np.argmax(probs, 1), data.splits[split]["label"], len(data.label_names))
    body = sum(p.numel() for p in model.model_body.parameters())
    head = model.model_head.coef_.size + model.model_head.intercept_.size
    return RunRecord(mode="setfit", model=EMBEDDED_MODEL, dataset=dataset, train_samples=len(train),
                     split_sizes={s: len(d) for s, d in data.splits.items()}, metrics=metrics,
                     train_seconds=round(seconds, 2), trainable_params=body + head, total_params=body + head,
                     peak_memory_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                     label_names=list(data.label_names), hardware=cpu_hardware(1),
                     finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     validation_seconds=scoring["validation"], test_seconds=scoring.get("test", 0.0),
                     config={"setfit_defaults": True, "max_steps": max_steps, "seed": seed, "dataset_name": dataset,
                             "max_train_samples": cfg.max_train_samples})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_name", default="sst2",
                        help="a shared data set's name, as compare's --dataset_name")
    parser.add_argument("--data_dir", default=None,
                        help="the shared data folder (default: XFER_NLP_DATA_DIR or ../shared/data)")
    parser.add_argument("--train_sizes", default="16,32,64",
                        help="comma list of training-set sizes (compare's stratified subsets)")
    parser.add_argument("--seeds", default="0,1,2",
                        help="comma list of seeds (each picks the subset and seeds setfit, as compare's)")
    parser.add_argument("--output_dir", required=True, help="a compare folder: cells go to OUTPUT_DIR/runs")
    parser.add_argument("--max_steps", type=int, default=None, help="cap on the pair stage's steps (default: none)")
    args = parser.parse_args(argv)
    overrides = {"max_steps": args.max_steps} if args.max_steps else {}
    for size in args.train_sizes.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            out = Path(args.output_dir) / "runs" / f"setfit-n{size}-s{seed}"
            if (out / "results.json").is_file():
                print(f"{out.name}: done, skipped")
                continue
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "cell.json", {"label": LABEL, "mode": "setfit", "size": size, "seed": seed,
                                           "overrides": overrides})
            record = run_cell(args.dataset_name, size, seed, out, args.max_steps, args.data_dir)
            write_json(out / "results.json", record.to_dict())  # whole or not at all: it marks a finished cell
            print(f"{out.name}: validation accuracy {record.metrics['validation']['accuracy']:.4f} in "
                  f"{record.train_seconds:.1f} s")
    print(write_report(args.output_dir))


if __name__ == "__main__":
    main()
