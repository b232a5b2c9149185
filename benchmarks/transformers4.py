"""Exports read by transformers 4: each mode's export of the embedded encoder, labelled by `pipeline()` under this
environment's transformers 5 and again under transformers 4.57 (`make test` installs it in .venv/transformers4),
each in a process where xfer_nlp cannot be imported. Reports whether the labels are identical and how far the
scores are apart.

    python benchmarks/transformers4.py --modes probe,finetune,lora,contrastive --max_train_samples 500 \
        --out benchmarks/results/transformers4.md

tests/test_families.py checks the same for every encoder family with tiny random models; this is the real encoder
on real texts (sst2 validation, 872 sentences).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import xfer_nlp
from xfer_nlp.data import EMBEDDED

from common import machine, publish

LOADER = r"""
import json, sys
sys.modules["xfer_nlp"] = None  # `import xfer_nlp` raises ImportError, as where it is not installed
import transformers
from transformers import pipeline

texts = [json.loads(l)["text"] for l in open(sys.argv[1], encoding="utf-8")]
out = {"transformers": transformers.__version__}
for folder in sys.argv[2:]:
    remote = json.load(open(folder + "/config.json")).get("auto_map") is not None
    clf = pipeline("text-classification", model=folder, device=-1, trust_remote_code=remote, truncation=True,
                   max_length=128)
    out[folder] = [[p["label"], p["score"]] for p in clf(texts, batch_size=32)]
print(json.dumps(out))
"""


def labelled(validation: Path, folders: list[Path], pythonpath: str | None) -> dict:
    env = dict(os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    done = subprocess.run([sys.executable, "-c", LOADER, str(validation), *map(str, folders)], capture_output=True,
                          text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="probe,finetune,lora,contrastive")
    parser.add_argument("--max_train_samples", type=int, default=500, help="sst2 training texts per run")
    parser.add_argument("--output_dir", default="/tmp/transformers4-exports")
    parser.add_argument("--transformers4", default=str(Path(sys.prefix) / "transformers4"))
    parser.add_argument("--out")
    args = parser.parse_args()
    folders = []
    for mode in args.modes.split(","):
        folder = Path(args.output_dir) / mode
        if not (folder / "results.json").is_file():
            xfer_nlp.run(mode=mode, max_train_samples=args.max_train_samples, output_dir=str(folder),
                         overwrite_output_dir=True, seed=0)
        folders.append(folder)
    validation = EMBEDDED / "sst2" / "validation.jsonl"  # the copy the package ships
    new, old = labelled(validation, folders, None), labelled(validation, folders, args.transformers4)
    rows = [f"| mode | architecture | labels identical (of {len(new[str(folders[0])])}) | largest score difference |",
            "|---|---|---|---|"]
    for mode, folder in zip(args.modes.split(","), folders):
        a, b = new[str(folder)], old[str(folder)]
        architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
        rows.append(f"| {mode} | {architecture} | {sum(x[0] == y[0] for x, y in zip(a, b))} | "
                    f"{max(abs(x[1] - y[1]) for x, y in zip(a, b)):.1e} |")
    publish(f"transformers {new['transformers']} against {old['transformers']}, on {machine()}; "
            f"{args.max_train_samples} sst2 training texts a run, seed 0.\n\n" + "\n".join(rows) + "\n\n    python "
            f"benchmarks/transformers4.py --modes {args.modes} --max_train_samples {args.max_train_samples}", args.out)


if __name__ == "__main__":
    main()
