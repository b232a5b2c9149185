"""xfer_nlp: probe, fine-tune, LoRA or train from scratch a BERT-family text classifier, behind one switch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The public API and the module each name lives in. A name's module is imported on first use (PEP 562), so that
# importing the package, and with it `xfer-nlp --help` (whose console script imports xfer_nlp.cli), does not pay
# the ~5 s of importing torch, transformers and datasets before anything needs them. compare() lives in grid.py:
# importing a submodule named compare would set the package's `compare` to that module, over the function.
_HOMES = {"run": "api", "predict": "api", "predict_stream": "api", "Predictor": "api", "RunResult": "api",
          "compare": "grid", "Comparison": "grid", "write_report": "report", "export_onnx": "onnx_export",
          "evaluate": "evaluation", "EvaluationResult": "evaluation", "push": "hub", "RunConfig": "config",
          "MODES": "config", "XferError": "errors", "ConfigError": "errors", "DataError": "errors"}

__all__ = list(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # found here from now on, without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


if TYPE_CHECKING:  # what type checkers and editors read: the same names, imported eagerly ("as": re-exported)
    from .api import Predictor as Predictor, RunResult as RunResult, predict as predict
    from .api import predict_stream as predict_stream, run as run
    from .config import MODES as MODES, RunConfig as RunConfig
    from .errors import ConfigError as ConfigError, DataError as DataError, XferError as XferError
    from .evaluation import EvaluationResult as EvaluationResult, evaluate as evaluate
    from .grid import Comparison as Comparison, compare as compare
    from .hub import push as push
    from .onnx_export import export_onnx as export_onnx
    from .report import write_report as write_report
