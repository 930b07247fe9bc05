"""KgCoOp: CoOp plus ``W · (1 − mean_c cos(t_c, t̂_c))`` between learned and hand-crafted class features.

``t_c`` are the learned prompt's class features, ``t̂_c`` frozen CLIP's features of KgCoOp's hand-crafted
prompt (CoOp's per-dataset template, DTD's reworded), both L2-normalised; ``W`` is upstream's
``TRAINER.COOP.W``. Upstream's ``CTX_INIT: True`` means the words "a photo of a", which is what the
configs here say; the rest of the prompt learner is CoOp's (``TRAINER.COOP``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plpp.engine import TRAINER_REGISTRY
from plpp.engine.utils import logger

from .base import TrainOutput
from .coop import CoOp, CustomCLIP
from .frozen_clip import KGCOOP_TEMPLATES, template_text_features
from .zsclip import DEFAULT_TEMPLATE


def add_config(cfg) -> None:
    """Declare KgCoOp's weight ``TRAINER.COOP.W`` (its other keys are CoOp's)."""
    if "W" not in cfg.TRAINER.COOP:
        cfg.TRAINER.COOP.W = 8.0  # KgCoOp: weight of the distance to the hand-crafted class features


def knowledge_distance(text_features: torch.Tensor, hand_crafted: torch.Tensor) -> torch.Tensor:
    """``1 − mean_c cos(text_features[c], hand_crafted[c])`` for class features ``[C, D]`` (fp32)."""
    return 1.0 - F.cosine_similarity(text_features.float(), hand_crafted.float(), dim=1, eps=1e-7).mean()


class KgCoOpCLIP(CustomCLIP):
    """CoOp's model plus the hand-crafted class features ``hand_crafted_features`` ``[C, D]`` (fp32, normalised)."""

    def __init__(self, cfg, classnames: list[str], clip_model: nn.Module, device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, classnames, clip_model)
        dataset = cfg.DATASET.NAME
        if dataset not in KGCOOP_TEMPLATES:
            logger.info(f"KgCoOp: no hand-crafted prompt for dataset '{dataset}'; using '{DEFAULT_TEMPLATE}'")
        template = KGCOOP_TEMPLATES.get(dataset, DEFAULT_TEMPLATE)
        logger.info(f'KgCoOp hand-crafted prompt: "{template}"')
        frozen = template_text_features(clip_model, classnames, [template], device)
        self.register_buffer("hand_crafted_features", frozen, persistent=False)


@TRAINER_REGISTRY.register()
class KgCoOp(CoOp):
    """Knowledge-guided Context Optimization (KgCoOp) on CLIP."""

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        if cfg.TRAINER.COOP.W < 0:
            raise ValueError(f"TRAINER.COOP.W (KgCoOp's weight) must be >= 0, got {cfg.TRAINER.COOP.W}")

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        return KgCoOpCLIP(self.cfg, classnames, clip_model, self.device)

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        out = super().forward_train(image, label)
        distance = knowledge_distance(out.forward.text_features, self.model.hand_crafted_features)
        out.losses["loss_kg"] = (float(self.cfg.TRAINER.COOP.W), distance)
        return out
