"""ONNX: export a trained classifier with torch's exporter, and compute its logits with onnxruntime.

The issue asked for optimum, the usual exporter. Its ONNX exporter now lives in the optimum-onnx package, whose
only release (0.1.0) requires transformers<4.58; xfer_nlp runs on transformers 5, so optimum cannot be installed
beside it. `torch.onnx.export` (torch.export + onnxscript, the exporter optimum-onnx itself calls) writes the graph
here; nothing in this module writes ONNX by hand. The export is checked before it is kept: onnxruntime must give the
torch model's labels and logits (within 1e-3) on texts of several lengths, batched and alone.

An .onnx file is a protobuf graph of standard operators: loading it runs no Python code, and onnxruntime is never
given a custom-operator library.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError
from .runfolder import ONNX_DIR, ONNX_MODEL, RESULTS, disk_full_explained

logger = logging.getLogger(__name__)

INSTALL = 'pip install -e ".[onnx]"  (or: pip install onnx onnxscript onnxruntime)'
# Texts the export is checked on: short and long, alone and batched with padding.
CHECK_TEXTS = ["a gripping, beautifully made film", "dull", "it is neither as funny nor as moving as it wants to be, "
               "and the last act drags on far too long " * 6]
# fp32 graph against fp32 torch: differences are float reassociation, relative to the largest logit ~1e-6 on the
# Intel Xeon but 1.2e-4 for a tiny RoBERTa on an AMD EPYC, whose kernels sum in another order; labels must be equal
TOLERANCE = 1e-3


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"ONNX needs packages that are not installed ({e.name}): {INSTALL}.") from None
    return onnxruntime


@dataclass
class OnnxClassifier:
    """An exported graph in an onnxruntime session: logits of a tokenised batch, as a torch tensor."""

    session: object
    inputs: list[str]

    @classmethod
    def load(cls, path: Path) -> "OnnxClassifier":
        ort = _require()
        if not path.is_file():
            raise ConfigError(f"'{path}' does not exist. Export the model first: xfer-nlp export "
                              f"{path.parent.parent} --format onnx")
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConfigError(f"'{path}' is not a loadable ONNX model ({type(e).__name__}: {str(e)[:200]}). "
                              "Export it again: xfer-nlp export RUN_DIR --format onnx") from None
        return cls(session, [i.name for i in session.get_inputs()])

    def __call__(self, batch: dict) -> torch.Tensor:
        missing = [name for name in self.inputs if name not in batch]
        if missing:
            raise ConfigError(f"The ONNX model takes {', '.join(missing)}, which this tokenizer does not produce; "
                              "export it again from the same folder.")
        feed = {name: batch[name].cpu().numpy().astype(np.int64) for name in self.inputs}
        return torch.from_numpy(self.session.run(["logits"], feed)[0])


def default_output(model: str) -> Path:
    return Path(model).expanduser() / ONNX_DIR / ONNX_MODEL


def export_onnx(model: str | Path, output: str | Path | None = None, opset: int = 18) -> Path:
    """Write `model` (a run folder, a model folder or a Hub id) as ONNX and return the file's path.

    Default output: MODEL/onnx/model.onnx (a Hub id needs `output`). The graph takes the tokenizer's inputs with
    dynamic batch and sequence axes and returns `logits`. For a finished run, results.json records the export and
    lists the file, so `xfer-nlp push` uploads it and `predict(..., backend="onnx")` finds it.
    """
    from .api import load_model

    _require()
    model = os.path.expanduser(model)  # ~/runs/x from Python; a Hub id is left as it is
    if output is None:
        if not Path(model).is_dir():
            raise ConfigError(f"'{model}' is not a local folder: pass --output PATH.onnx to say where the export goes.")
        output = default_output(model)
    output = Path(output)
    if output.suffix != ".onnx":
        raise ConfigError(f"--output '{output}' must end in .onnx.")
    tokenizer, classifier, reading = load_model(model)
    classifier = classifier.to("cpu").float().eval()
    sample = tokenizer(CHECK_TEXTS[:2], padding=True, return_tensors="pt")
    names = [k for k in tokenizer.model_input_names if k in sample]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.tmp{os.getpid()}")
    # outside the try: the half-written file is gone before the message counts the room left
    with disk_full_explained(output.parent, f"the ONNX model to {output}",
                             "Nothing was written. Free space, or pass --output on another disk."):
        try:
            try:
                with torch.no_grad(), _exporter_quiet():
                    program = torch.onnx.export(classifier, (), kwargs={k: sample[k] for k in names},
                                                input_names=names, output_names=["logits"], opset_version=opset,
                                                dynamo=True, dynamic_shapes={k: {0: batch, 1: sequence} for k in names},
                                                verbose=False)
            except Exception as e:  # torch.export's many kinds: data-dependent shapes, unsupported ops, guards
                while e.__cause__ is not None:  # the exporter wraps torch.export's own error in its step list
                    e = e.__cause__
                why = (re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() or [""])[0][:300]
                raise ConfigError(f"torch's ONNX exporter could not trace '{model}' ({type(classifier).__name__}): "
                                  f"{type(e).__name__}: {why.rstrip('.')}. Nothing was written. Its torch model "
                                  "predicts as before (xfer-nlp predict without --backend onnx).") from None
            program.save(str(staging), external_data=False)
            diff = _check(staging, tokenizer, classifier, reading.max_length, names)
            os.replace(staging, output)
        finally:
            staging.unlink(missing_ok=True)
    logger.info("Exported %s to %s (opset %d); onnxruntime's logits are within %.1e (relative) of torch's.", model, output,
                opset, diff)
    _record(Path(model).expanduser(), output, opset, diff)
    return output


@contextmanager
def _exporter_quiet():
    """Without torch's exporter's notes that say nothing about this model (ten lines a user would take for trouble):
    torchvision ops it skips because torchvision is not installed, its own deprecation of LeafSpec, and that every
    input shares the batch and sequence axes, which is meant. The export is checked against torch just after."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"# The axis name: \w+ will not be used", UserWarning)
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _check(path: Path, tokenizer, classifier, max_length: int, names: list[str]) -> float:
    """The largest logit difference (relative to the largest logit, or absolute below 1) between onnxruntime and
    torch on CHECK_TEXTS (batched, then one at a time); an export that disagrees is an error and is not kept."""
    onnx_model = OnnxClassifier.load(path)
    worst = 0.0
    for texts in (CHECK_TEXTS, *([t] for t in CHECK_TEXTS)):
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            ref = classifier(**{k: enc[k] for k in names}).logits
        got = onnx_model(enc)
        # Relative to the logits' size: a probe's head (standardisation folded in) can make logits of ~100.
        worst = max(worst, float((got - ref).abs().max() / ref.abs().max().clamp_min(1.0)))
        if worst > TOLERANCE or not torch.equal(got.argmax(-1), ref.argmax(-1)):
            raise ConfigError(f"The ONNX export computes other logits than the torch model (largest relative "
                              f"difference {worst:.2e}); it was not written. Report this with the model's architecture "
                              f"({type(classifier).__name__}) and torch {torch.__version__}.")
    return worst


def _record(folder: Path, output: Path, opset: int, diff: float) -> None:
    """A finished run's results.json gains the export (and lists its file for push) when it lies in the run folder."""
    from .runfolder import RunRecord, read_results, write_json

    if not (folder / RESULTS).is_file():
        return
    try:
        relative = output.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return  # exported elsewhere: the run folder is left as it was
    record = read_results(folder)
    files = [f for f in (record.files or []) if f != relative] + [relative]
    info = {"file": relative, "opset": opset, "max_logit_diff": diff, "torch": torch.__version__,
            "onnxruntime": _require().__version__}
    write_json(folder / RESULTS, RunRecord.from_dict({**record.to_dict(), "files": files, "onnx": info}).to_dict())

