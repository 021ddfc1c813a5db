"""Classification metrics (scikit-learn): accuracy, macro F1, confusion matrix."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


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
