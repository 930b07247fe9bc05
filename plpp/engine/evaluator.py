"""Classification evaluator: accuracy, error and macro-F1, printed as Dassl's ``=> result`` block."""

from __future__ import annotations

from collections import OrderedDict, defaultdict

import numpy as np
import torch

from .distributed import is_dist
from .registry import EVALUATOR_REGISTRY, unknown_name_message
from .utils import logger


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-averaged F1 over the labels present in ``y_true`` (sklearn's ``labels=unique(y_true)``)."""
    scores = []
    for label in np.unique(y_true):
        tp = np.sum((y_pred == label) & (y_true == label))
        fp = np.sum((y_pred == label) & (y_true != label))
        fn = np.sum((y_pred != label) & (y_true == label))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores)) if scores else 0.0


@EVALUATOR_REGISTRY.register()
class Classification:
    """Accumulates argmax predictions over batches and reports the metrics."""

    def __init__(self, cfg, lab2cname: dict | None = None, **kwargs) -> None:
        self.cfg = cfg
        self._lab2cname = lab2cname
        self.reset()

    def reset(self) -> None:
        self._correct = 0
        self._total = 0
        self._y_true: list[int] = []
        self._y_pred: list[int] = []
        self._gathered = False

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        """Add a batch: ``mo`` [B, C] logits, ``gt`` [B] labels."""
        pred = mo.max(1)[1]
        self._correct += int(pred.eq(gt).sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.cpu().tolist())
        self._y_pred.extend(pred.cpu().tolist())

    def gather(self) -> None:
        """In a multi-process run, collect every rank's predictions on every rank (evaluation is sharded).

        Each rank evaluated a contiguous block of the split (``ShardSampler``: no padding, no
        duplicates), so concatenating in rank order restores the sequential order and every metric,
        per-class results included, equals a 1-process evaluation. Calling it twice is harmless.
        """
        if not is_dist() or self._gathered:
            return
        import torch.distributed as dist

        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self._y_true, self._y_pred))
        self._gathered = True
        self._y_true = [y for p in parts for y in p[0]]
        self._y_pred = [y for p in parts for y in p[1]]
        self._total = len(self._y_true)
        self._correct = int(sum(t == p for t, p in zip(self._y_true, self._y_pred)))

    def evaluate(self) -> OrderedDict:
        if self._total == 0:
            raise RuntimeError("The evaluation split is empty: no images were evaluated. Check the dataset's "
                               "test/val folders (python -m plpp.datasets.check --root DATASET.ROOT).")
        results = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        f1 = 100.0 * macro_f1(np.asarray(self._y_true), np.asarray(self._y_pred))
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = f1
        logger.info(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {f1:.1f}%"
        )
        if self.cfg.TEST.PER_CLASS_RESULT:
            per_class = defaultdict(list)
            for t, p in zip(self._y_true, self._y_pred):
                per_class[t].append(int(t == p))
            accs = []
            logger.info("=> per-class result")
            for label in sorted(per_class):
                res = per_class[label]
                cacc = 100.0 * sum(res) / len(res)
                accs.append(cacc)
                name = self._lab2cname.get(label, str(label)) if self._lab2cname else str(label)
                logger.info(f"* class: {label} ({name})\ttotal: {len(res):,}\tcorrect: {sum(res):,}\t"
                            f"acc: {cacc:.1f}%")
            results["perclass_accuracy"] = float(np.mean(accs))
            logger.info(f"* average: {results['perclass_accuracy']:.1f}%")
        return results

    @property
    def counts(self) -> tuple[int, int]:
        return self._total, self._correct


def build_evaluator(cfg, **kwargs):
    name = cfg.TEST.EVALUATOR
    if name not in EVALUATOR_REGISTRY:
        raise ValueError(unknown_name_message("evaluator (TEST.EVALUATOR)", name,
                                              EVALUATOR_REGISTRY.registered_names()))
    return EVALUATOR_REGISTRY.get(name)(cfg, **kwargs)
