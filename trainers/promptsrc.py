"""PromptSRC: IVLP prompts regularised towards frozen CLIP, and averaged over epochs with Gaussian weights.

Loss (upstream's terms and weights):

* ``loss_ce``: cross-entropy of the prompted logits;
* ``loss_scl_text`` × ``TEXT_LOSS_WEIGHT``: mean |prompted class features − frozen ones| (L1), both
  L2-normalised; the frozen ones are the mean of CLIP's raw text features over 60 ImageNet templates,
  normalised (computed once per class set);
* ``loss_scl_image`` × ``IMAGE_LOSS_WEIGHT``: the same L1 between the prompted image features and
  frozen CLIP's (the same backbone without prompts, under ``no_grad``);
* ``loss_scl_logits`` × 1: ``KL(p_zero-shot ‖ p_prompted)`` summed over the batch and classes and
  divided by ``B·C`` (upstream's ``reduction='sum' / logits.numel()``, not a per-sample mean).

Gaussian prompt aggregation (GPA) is epoch work: after epoch ``e`` (1-based) the learner's
parameters, weighted by ``w_e ∝ exp(-(e - GPA_MEAN)² / (2 GPA_STD²))`` (normalised over epochs
``1 .. MAX_EPOCH``), are added to a running sum kept as buffers of the learner, so checkpoints carry
it and a resumed run continues it exactly; after the last epoch the sum replaces the parameters
(it is what the last checkpoint holds and what is evaluated).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from plpp.engine import TRAINER_REGISTRY
from plpp.engine.utils import logger

from .base import TrainOutput
from .frozen_clip import PROMPTSRC_TEMPLATES, template_text_features
from .ivlp import IVLP, IVLPCLIP, _declare


def add_config(cfg) -> None:
    """Declare ``TRAINER.PROMPTSRC`` (PromptSRC's keys and defaults)."""
    if "PROMPTSRC" in cfg.TRAINER:
        return
    _declare(cfg, "PROMPTSRC", n_ctx=4, depth=9)
    node = cfg.TRAINER.PROMPTSRC
    # Integers, as upstream declares them (so its YAML files merge unchanged).
    node.TEXT_LOSS_WEIGHT = 25  # weight of the L1 between prompted and frozen class features
    node.IMAGE_LOSS_WEIGHT = 10  # weight of the L1 between prompted and frozen image features
    node.GPA_MEAN = 15  # epoch (1-based) where the Gaussian weights of prompt aggregation peak
    node.GPA_STD = 1  # their standard deviation, in epochs


def gpa_weights(max_epoch: int, mean: float, std: float) -> list[float]:
    """Normalised Gaussian weights of epochs ``1 .. max_epoch``: ``w_e ∝ exp(-(e - mean)² / (2 std²))``.

    Computed in log space, so a peak far outside the epochs still gives finite weights (concentrated
    on the nearest epoch) where the plain ratio of densities would be 0/0.
    """
    if std <= 0:
        raise ValueError(f"TRAINER.PROMPTSRC.GPA_STD must be > 0, got {std}")
    logs = [-0.5 * ((e - mean) / std) ** 2 for e in range(1, max_epoch + 1)]
    top = max(logs)
    raw = [math.exp(v - top) for v in logs]
    return [r / sum(raw) for r in raw]


class PromptAverage(nn.Module):
    """Running weighted sum of a module's parameters (fp32 buffers named after them, so it is checkpointed)."""

    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = list(params)
        for name, p in params.items():
            self.register_buffer(self._key(name), torch.zeros_like(p, dtype=torch.float32))

    @staticmethod
    def _key(name: str) -> str:
        return "sum__" + name.replace(".", "__")

    @torch.no_grad()
    def add(self, params: dict[str, torch.Tensor], weight: float) -> None:
        for name in self.names:
            getattr(self, self._key(name)).add_(params[name].detach().float() * weight)

    @torch.no_grad()
    def copy_to(self, params: dict[str, torch.Tensor]) -> None:
        for name in self.names:
            params[name].copy_(getattr(self, self._key(name)))


class PromptSRCCLIP(IVLPCLIP):
    """IVLP's model plus the frozen references: class features ``[C, D]`` and the unprompted image tower."""

    CFG_KEY = "PROMPTSRC"

    def __init__(self, cfg, classnames: list[str], clip_model: nn.Module, device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, classnames, clip_model)
        frozen = template_text_features(clip_model, classnames, PROMPTSRC_TEMPLATES, device, normalize_each=False)
        self.register_buffer("frozen_text_features", frozen, persistent=False)
        learner = self.prompt_learner
        learner.gpa = PromptAverage(dict(learner.named_parameters()))

    @torch.no_grad()
    def frozen_image_features(self, image: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP's image features ``[B, D]`` (no prompts), L2-normalised."""
        feats = self.image_encoder(image.to(self.dtype))
        return feats / feats.norm(dim=-1, keepdim=True)

    def frozen_logits(self, frozen_image_features: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits ``[B, C]`` of frozen CLIP (fp32)."""
        scale = self.logit_scale.exp().float()
        return scale * frozen_image_features.float() @ self.frozen_text_features.t()


def self_regulating_terms(image_features: torch.Tensor, text_features: torch.Tensor, logits: torch.Tensor,
                          frozen_image: torch.Tensor, frozen_text: torch.Tensor,
                          frozen_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """PromptSRC's three consistency terms (unweighted, fp32): ``scl_text``, ``scl_image``, ``scl_logits``."""
    log_p = F.log_softmax(logits.float(), dim=1)
    log_q = F.log_softmax(frozen_logits.float(), dim=1)
    return {
        "scl_text": F.l1_loss(text_features.float(), frozen_text.float()),
        "scl_image": F.l1_loss(image_features.float(), frozen_image.float()),
        "scl_logits": F.kl_div(log_p, log_q, reduction="sum", log_target=True) / logits.numel(),
    }


@TRAINER_REGISTRY.register()
class PromptSRC(IVLP):
    """PromptSRC: IVLP with self-regulating constraints and Gaussian prompt aggregation (needs a ViT for vision
    prompts)."""

    PREC_KEY = "PROMPTSRC"

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        node = cfg.TRAINER.PROMPTSRC
        if node.TEXT_LOSS_WEIGHT < 0 or node.IMAGE_LOSS_WEIGHT < 0:
            raise ValueError("TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT and IMAGE_LOSS_WEIGHT must be >= 0")
        gpa_weights(1, node.GPA_MEAN, node.GPA_STD)  # refuses GPA_STD <= 0

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        return PromptSRCCLIP(self.cfg, classnames, clip_model, self.device)

    def build_model(self) -> None:
        super().build_model()
        node = self.cfg.TRAINER.PROMPTSRC
        self.gpa_weights = gpa_weights(self.max_epoch, node.GPA_MEAN, node.GPA_STD)
        shown = ", ".join(f"{e + 1}: {w:.3g}" for e, w in enumerate(self.gpa_weights) if w >= 1e-3)
        logger.info(f"GPA weights over epochs (mean {node.GPA_MEAN}, std {node.GPA_STD}; those >= 0.001): {shown}")

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        node = self.cfg.TRAINER.PROMPTSRC
        out = super().forward_train(image, label)
        fwd, model = out.forward, self.model
        frozen_image = model.frozen_image_features(image)
        terms = self_regulating_terms(fwd.image_features, fwd.text_features, fwd.logits, frozen_image,
                                      model.frozen_text_features, model.frozen_logits(frozen_image))
        out.losses["loss_scl_text"] = (float(node.TEXT_LOSS_WEIGHT), terms["scl_text"])
        out.losses["loss_scl_image"] = (float(node.IMAGE_LOSS_WEIGHT), terms["scl_image"])
        out.losses["loss_scl_logits"] = (1.0, terms["scl_logits"])
        return out

    def after_epoch(self) -> None:
        """GPA: add this epoch's prompts with their weight; after the last epoch deploy the average (then save)."""
        learner = self.model.prompt_learner
        params = dict(learner.named_parameters())
        learner.gpa.add(params, self.gpa_weights[self.epoch])
        if self.epoch + 1 == self.max_epoch:
            learner.gpa.copy_to(params)
            logger.info(f"GPA: using the Gaussian-weighted average of the prompts of epochs 1-{self.max_epoch}")
        super().after_epoch()
