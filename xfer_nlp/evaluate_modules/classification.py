"""Single-label classification metrics as an `evaluate` module that ships with xfer_nlp and loads by path, offline.

Returns accuracy, macro-F1 (the unweighted mean of per-class F1; a class absent from both predictions and
references counts as 0), per-class precision, recall, F1 and support, and the confusion matrix (rows: the true
class, columns: the predicted one). `num_labels` fixes the classes, so a class no example of a split has still
gets its row.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = __doc__
_KWARGS = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    num_labels (int): the number of classes (ids 0..num_labels-1).
Returns:
    accuracy, macro_f1 (floats), per_class ({id: {precision, recall, f1, support}}), confusion_matrix (list of lists).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}))

    def _compute(self, predictions, references, num_labels):
        predictions, references = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
        if len(references) == 0:
            raise ValueError("no examples to score")
        confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
        np.add.at(confusion, (references, predictions), 1)
        tp = np.diag(confusion).astype(float)
        predicted, actual = confusion.sum(0), confusion.sum(1)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
        f1 = np.divide(2 * tp, predicted + actual, out=np.zeros_like(tp), where=(predicted + actual) > 0)
        return {"accuracy": float(tp.sum() / len(references)), "macro_f1": float(f1.mean()),
                "per_class": {str(c): {"precision": float(precision[c]), "recall": float(recall[c]),
                                       "f1": float(f1[c]), "support": int(actual[c])} for c in range(num_labels)},
                "confusion_matrix": confusion.tolist()}
