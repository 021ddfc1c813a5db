"""Classification metrics (scikit-learn): accuracy, macro F1, confusion matrix, and the meter of one
evaluation pass."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from src.metrics.meter import SumMeter


def classification_metrics(y_true, y_pred, num_classes: int) -> dict[str, float]:
    """``acc`` and macro ``f1`` over all classes (a class never predicted nor present counts as 0
    only if it appears in either array; sklearn's ``zero_division=0``)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return {"acc": float("nan"), "f1": float("nan")}
    return {"acc": float(accuracy_score(y_true, y_pred)),
            "f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


class ClassificationMeter(SumMeter):
    """Predicted and true labels of one evaluation pass (exact metrics over all ranks' shards) and the
    summed cross-entropy."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.preds: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, preds, labels, loss_sum: float) -> None:
        """``preds``, ``labels``: (B,) class indices; ``loss_sum``: the batch's summed loss."""
        self.preds.append(np.asarray(preds))
        self.labels.append(np.asarray(labels))
        self.add(loss_sum=loss_sum, loss_weight=len(self.labels[-1]))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(y_true, y_pred) of everything seen."""
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, int))
        return cat(self.labels), cat(self.preds)

    def state(self) -> dict:
        return {"sums": super().state(), "preds": self.preds, "labels": self.labels}

    def merge(self, states) -> None:
        super().merge([s["sums"] for s in states])
        for s in states:
            self.preds += s["preds"]
            self.labels += s["labels"]

    def compute(self) -> dict[str, float]:
        y_true, y_pred = self.arrays()
        return {"loss": self.loss(), **classification_metrics(y_true, y_pred, self.num_classes)}
