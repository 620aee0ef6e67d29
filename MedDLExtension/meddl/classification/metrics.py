"""Classification metrics in numpy: accuracy, balanced accuracy, ROC AUC, confusion matrix."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (truth.astype(int), predicted.astype(int)), 1)
    return matrix


def balanced_accuracy(matrix: np.ndarray) -> float:
    """Mean recall over the classes present in the truth."""
    present = matrix.sum(axis=1) > 0
    return float(np.mean(np.diag(matrix)[present] / matrix.sum(axis=1)[present]))


def binary_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney statistic, ties counted half); NaN with one class."""
    positives, negatives = int(truth.sum()), int(len(truth) - truth.sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_auc(truth: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary AUC of class 1, or the macro one-vs-rest mean for more classes."""
    if probabilities.shape[1] == 2:
        return binary_auc(truth == 1, probabilities[:, 1])
    values = [binary_auc(truth == k, probabilities[:, k]) for k in range(probabilities.shape[1])]
    return float(np.nanmean(values))


def summary(truth: np.ndarray, probabilities: np.ndarray) -> dict:
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(truth, predicted, probabilities.shape[1])
    return {"accuracy": float((predicted == truth).mean()), "balanced_accuracy": balanced_accuracy(matrix),
            "roc_auc": roc_auc(truth, probabilities), "confusion_matrix": matrix.tolist(), "count": int(len(truth))}
