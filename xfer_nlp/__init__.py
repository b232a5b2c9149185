"""xfer_nlp: probe, fine-tune, LoRA or train from scratch a BERT-family text classifier, behind one switch."""

from .api import Predictor, RunResult, predict, predict_stream, run
from .compare import Comparison, compare
from .config import MODES, RunConfig
from .errors import ConfigError, DataError, XferError
from .evaluation import EvaluationResult, evaluate
from .hub import push
from .onnx_export import export_onnx
from .report import write_report

__all__ = ["run", "compare", "write_report", "predict", "predict_stream", "Predictor", "export_onnx", "evaluate", "push", "EvaluationResult", "Comparison", "RunConfig", "RunResult", "MODES", "XferError", "ConfigError", "DataError"]
__version__ = "0.1.0"
