"""Linear-probe CLIP: L2-regularised logistic regression on frozen CLIP image features (CoOp's baseline).

As CoOp's ``lpclip``: features are the image tower's raw outputs (no normalisation) of the test-time
transform; the regularisation strength ``C`` is chosen on the few-shot validation split by a grid
``1e6, 1e4, …, 1e-6`` (the first best), then ``SEARCH_STEPS`` rounds that compare the two ends of a
range around it, keep the better end and halve the range in log space; the classifier of the last
round is the result. The fit minimises ``½‖W‖² + C Σ_i CE(W x_i + b, y_i)`` (bias not penalised; two
classes: one weight vector, as scikit-learn's binary ``LogisticRegression``) with L-BFGS in float64.

The run is one "epoch" of the engine: it writes a checkpoint of the classifier (``W``, ``b`` and the
chosen ``C``), ``Finish training``, the ``* accuracy:`` block and ``results.json``, so tables and
``--eval-only`` treat it like any other trainer. The classifier has one row per training class: it
cannot evaluate other classes (no base-to-new or cross-dataset transfer).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from plpp.clip_utils import PRECISIONS
from plpp.engine import TRAINER_REGISTRY, TrainerX
from plpp.engine.checkpoint import CheckpointError
from plpp.engine.utils import logger

from .base import backbone_results_metadata, input_from_backbone, load_clip_for

#: First grid of ``C`` values (CoOp's lpclip); the first best is refined by ``SEARCH_STEPS`` rounds.
C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def add_config(cfg) -> None:
    """Declare ``TRAINER.LINEAR_PROBE``."""
    from yacs.config import CfgNode as CN

    if "LINEAR_PROBE" in cfg.TRAINER:
        return
    cfg.TRAINER.LINEAR_PROBE = CN()
    cfg.TRAINER.LINEAR_PROBE.PREC = "fp16"  # image features in fp16, fp32, amp or bf16 (fp16/amp: fp32 on CPU)
    cfg.TRAINER.LINEAR_PROBE.SEARCH_STEPS = 8  # refinement rounds of the C search after the grid
    cfg.TRAINER.LINEAR_PROBE.MAX_ITER = 1000  # L-BFGS iterations per fit
    cfg.TRAINER.LINEAR_PROBE.ALLOW_TEST_AS_VAL = False  # True: choose C on a val split that is the test set


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, n_classes: int, c: float,
                            max_iter: int = 1000, tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``½‖W‖² + C Σ_i CE(W x_i + b, y_i)`` over ``W [K, D]``, ``b [K]`` (float64, L-BFGS).

    With ``n_classes == 2`` the model is binary logistic regression (one weight vector ``w``, logits
    ``[0, w·x + b]``), as scikit-learn fits two classes. The objective is divided by ``C·n`` (same
    minimiser) so the gradient tolerance does not depend on ``C`` or the sample count.
    """
    x = features.double()
    y = labels.long().to(x.device)
    n, d = x.shape
    rows = 1 if n_classes == 2 else n_classes
    weight = torch.zeros(rows, d, dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(rows, dtype=torch.float64, device=x.device, requires_grad=True)
    penalty = 0.5 / (c * n)
    optim = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=0,
                              history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optim.zero_grad()
        loss = F.cross_entropy(_logits(x, weight, bias, n_classes), y) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optim.step(objective)
    return weight.detach(), bias.detach()


def _logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n_classes: int) -> torch.Tensor:
    z = x @ weight.t() + bias
    return torch.cat([torch.zeros_like(z), z], dim=1) if n_classes == 2 and z.shape[1] == 1 else z


def search_c(evaluate: Callable[[float], tuple[float, object]], steps: int,
             grid: tuple[float, ...] = C_GRID) -> tuple[float, object, list[tuple[float, float]]]:
    """CoOp lpclip's search for ``C``; ``evaluate(C) -> (val accuracy, fitted model)``.

    Returns ``(C, model, [(C, accuracy), ...] in evaluation order)``: the grid's first best ``C*``, then
    ``steps`` rounds on ``[C*/10, 10·C*]`` that fit both ends, keep the better (the left one on a tie)
    and move the other end to the midpoint in log10; the last round's kept end is the answer.
    """
    history: list[tuple[float, float]] = []
    scores = []
    for c in grid:
        acc, _ = evaluate(c)
        history.append((c, acc))
        scores.append(acc)
    peak = grid[max(range(len(grid)), key=lambda i: (scores[i], -i))]
    left, right = 0.1 * peak, 10.0 * peak
    best_c, best_model = peak, None
    if steps < 1:
        _, best_model = evaluate(peak)
        return peak, best_model, history
    for _ in range(steps):
        acc_left, model_left = evaluate(left)
        acc_right, model_right = evaluate(right)
        history += [(left, acc_left), (right, acc_right)]
        mid = 0.5 * (math.log10(left) + math.log10(right))
        if acc_left < acc_right:
            best_c, best_model = right, model_right
            left = 10.0**mid
        else:
            best_c, best_model = left, model_left
            right = 10.0**mid
    return best_c, best_model, history


class LinearProbe(nn.Module):
    """The fitted classifier (float64): ``weight [K', D]``, ``bias [K']`` and the chosen ``c`` (a 0-d tensor)."""

    def __init__(self, n_classes: int, dim: int) -> None:
        super().__init__()
        rows = 1 if n_classes == 2 else n_classes
        self.n_classes = n_classes
        self.weight = nn.Parameter(torch.zeros(rows, dim, dtype=torch.float64), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(rows, dtype=torch.float64), requires_grad=False)
        self.register_buffer("c", torch.tensor(float("nan"), dtype=torch.float64))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return _logits(features.double(), self.weight, self.bias, self.n_classes)


@TRAINER_REGISTRY.register()
class LinearProbeCLIP(TrainerX):
    """Logistic regression on frozen CLIP image features; ``C`` chosen on the few-shot validation split."""

    PREC_KEY = "LINEAR_PROBE"
    MODEL_NAME = "linear_probe"

    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER.LINEAR_PROBE
        if node.PREC not in PRECISIONS:
            raise ValueError(f"TRAINER.LINEAR_PROBE.PREC '{node.PREC}' is not valid; choose one of "
                             f"{', '.join(PRECISIONS)}")
        input_from_backbone(cfg)  # an open_clip backbone's own preprocessing (see trainers.base)
        size = tuple(cfg.INPUT.SIZE)
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"INPUT.SIZE must be square for CLIP, got {size}")
        if node.SEARCH_STEPS < 0 or node.MAX_ITER < 1:
            raise ValueError("TRAINER.LINEAR_PROBE.SEARCH_STEPS must be >= 0 and MAX_ITER >= 1")

    def build_model(self) -> None:
        self.precision, clip_model = load_clip_for(self.cfg, self.PREC_KEY, self.device)
        clip_model.requires_grad_(False)
        self.image_encoder = clip_model.visual.to(self.device).eval()
        self.image_dtype = clip_model.dtype  # the dtype images go in (the image tower's first layer's)
        dim = clip_model.text_projection.shape[1]
        self.model = LinearProbe(self.num_classes, dim).to(self.device)
        self.register_model(self.MODEL_NAME, self.model)
        if self.max_epoch != 1:
            logger.info(f"LinearProbeCLIP fits once: OPTIM.MAX_EPOCH {self.max_epoch} is read as 1")
        self.max_epoch = 1

    def results_metadata(self) -> dict:
        """``results.json`` names the backbone file and its kind, as for every other CLIP trainer."""
        return backbone_results_metadata(self.cfg)

    @torch.no_grad()
    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP's raw image features ``[B, D]`` (fp32), as lpclip's ``clip_model.visual(image)``."""
        with self.precision.autocast():
            return self.image_encoder(image.to(self.device, self.image_dtype)).float()

    def _features_of(self, items, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of ``items`` under the test transform (no augmentation), in order."""
        like = self.test_loader
        dataset = type(like.dataset)(self.cfg, items, transform=like.dataset.transform, is_train=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.cfg.DATALOADER.TEST.BATCH_SIZE, shuffle=False,
                                             num_workers=self.cfg.DATALOADER.NUM_WORKERS, drop_last=False)
        feats, labels = [], []
        for batch in loader:
            feats.append(self.image_features(batch["img"]).cpu())
            labels.append(batch["label"])
        logger.info(f"Extracted {what} features: {sum(len(f) for f in feats):,} images")
        return torch.cat(feats), torch.cat(labels)

    def _validation_items(self) -> list:
        dataset = self.dm.dataset
        if not dataset.val:
            raise ValueError(f"LinearProbeCLIP chooses C on the validation split, but {self.cfg.DATASET.NAME} has "
                             "none here; use a dataset with a val split")
        test_paths = {item.impath for item in dataset.test}
        shared = sum(item.impath in test_paths for item in dataset.val)
        if shared and not self.cfg.TRAINER.LINEAR_PROBE.ALLOW_TEST_AS_VAL:
            raise ValueError(
                f"LinearProbeCLIP chooses C on the validation split, but {shared:,} of the {len(dataset.val):,} "
                f"validation images of {self.cfg.DATASET.NAME} are test images (ImageNet's val split is its test "
                "set, as in CoOp), so C would be tuned on the test set. Set TRAINER.LINEAR_PROBE.ALLOW_TEST_AS_VAL "
                "True to do it anyway, as CoOp's lpclip does, and say so next to the numbers.")
        if shared:
            logger.info(f"Note: choosing C on {shared:,} test images (TRAINER.LINEAR_PROBE.ALLOW_TEST_AS_VAL True)")
        return dataset.val

    def run_epoch(self) -> None:
        node = self.cfg.TRAINER.LINEAR_PROBE
        val_items = self._validation_items()
        x_train, y_train = self._features_of(self.dm.dataset.train_x, "training")
        x_val, y_val = self._features_of(val_items, "validation")
        n_classes = self.num_classes
        missing = sorted(set(range(n_classes)) - set(y_train.tolist()))
        if missing:
            raise ValueError(f"LinearProbeCLIP: classes {missing[:5]} have no training image")

        fits: dict[float, tuple[float, tuple[torch.Tensor, torch.Tensor]]] = {}

        def evaluate(c: float):
            if c not in fits:  # the search often asks for the same C again (the fit is deterministic)
                weight, bias = fit_logistic_regression(x_train, y_train, n_classes, c, int(node.MAX_ITER))
                pred = _logits(x_val.double(), weight, bias, n_classes).argmax(dim=1)
                fits[c] = (100.0 * (pred == y_val).double().mean().item(), (weight, bias))
                logger.info(f"C {c:.4g}: val accuracy {fits[c][0]:.2f}%")
            return fits[c]

        c, (weight, bias), _ = search_c(evaluate, int(node.SEARCH_STEPS))
        with torch.no_grad():
            self.model.weight.copy_(weight)
            self.model.bias.copy_(bias)
            self.model.c.fill_(c)
        logger.info(f"Linear probe: C = {c:.6g} ({len(y_train):,} training, {len(y_val):,} validation images)")

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        try:
            super().load_model(directory, epoch)
        except CheckpointError as exc:
            if "shape mismatch" not in str(exc):
                raise
            raise CheckpointError(f"{exc} LinearProbeCLIP's classifier has one row per class it was trained on, so "
                                  "it evaluates only that class set (no base-to-new or cross-dataset transfer)."
                                  ) from None
        logger.info(f"Linear probe C = {self.model.c.item():.6g}")

    @torch.no_grad()
    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(self.image_features(input)).float()
