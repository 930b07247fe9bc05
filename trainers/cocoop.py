"""CoCoOp: CoOp's context plus a per-image bias from a small meta-net (conditional prompts).

Each image ``x`` gets its own context ``ctx + π(x)``, so the text side runs over all classes once
per image. That pass is batched over the images of a batch instead of CoCoOp's loop per image: each
image's ``[SOS][ctx + π(x)]`` prefix runs once, and every class's name tokens attend to it (split into
chunks of at most ``max_tokens_per_pass`` tokens). The checkpoint holds ``ctx`` and the meta-net only:
nothing depends on the class list.
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

import torch
from torch import nn

from plpp.engine import TRAINER_REGISTRY
from plpp.text import TextPrompts, TextWork

from .base import ClipPromptTrainer, ForwardPass
from .coop import CustomCLIP, PromptLearner


def add_config(cfg) -> None:
    """Declare ``TRAINER.COCOOP`` (CoCoOp's keys and defaults)."""
    from yacs.config import CfgNode as CN

    if "COCOOP" in cfg.TRAINER:
        return
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 16  # number of context tokens
    cfg.TRAINER.COCOOP.CTX_INIT = ""  # initialise the context from this text (N_CTX = its words, as upstream)
    cfg.TRAINER.COCOOP.PREC = "fp16"  # fp16 (upstream's), fp32, amp (fp32 master) or bf16; fp16/amp: fp32 on CPU
    cfg.TRAINER.COCOOP.TEXT_CHECKPOINT = "auto"  # checkpoint text activations: auto (many prompt tokens), always, never
    cfg.TRAINER.COCOOP.TEXT_PASS = "fast"  # fast: only the tokens that can change the features (exact); full: all 77


class ConditionalPromptLearner(PromptLearner):
    """Shared context ``ctx`` [M, d] before the class name, plus a meta-net ``π``: image feature → bias.

    ``π`` is Linear(D → D//16) – ReLU – Linear(D//16 → d), with D the image-feature width
    (``text_projection.shape[1]``) and d the token width, both read from the model (512→32→512 for
    ViT-B/16). Class-dependent token embeddings are non-persistent buffers (see ``PromptLearner``).
    Under ``PREC fp16`` both ``ctx`` and ``π`` are fp16, as upstream's ``.half()``-ed meta-net.
    """

    FP16_PARAMETERS = ("ctx", "meta_net")

    def __init__(self, cocoop_cfg, classnames: list[str], clip_model: nn.Module) -> None:
        layout = SimpleNamespace(N_CTX=cocoop_cfg.N_CTX, CTX_INIT=cocoop_cfg.CTX_INIT, CSC=False,
                                 CLASS_TOKEN_POSITION="end")
        super().__init__(layout, classnames, clip_model)
        feature_dim = clip_model.text_projection.shape[1]
        width = self.ctx.shape[-1]
        hidden = max(1, feature_dim // 16)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(feature_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, width)),
        ]))

    def conditional_context(self, image_features: torch.Tensor) -> torch.Tensor:
        """``ctx + π(x)``: normalised image features ``[B, D]`` → per-image context ``[B, M, d]`` (fp32)."""
        bias = self.meta_net(image_features.to(self.ctx.dtype))  # [B, d]
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def conditional_text_prompts(self, ctx: torch.Tensor) -> TextPrompts:
        """The text pass for per-image contexts ``ctx [B, M, d]``: one shared prefix per image, every class after it."""
        return TextPrompts(self.layout, self.shared_tokens(ctx), self.rest_tokens())


class CoCoOpCLIP(CustomCLIP):
    """CLIP with conditional prompts: ``forward(image [B, 3, H, W]) -> logits [B, C]`` in every mode."""

    CFG_KEY = "COCOOP"
    #: Most tokens (of all images' prompts) in one text-encoder call; bounds evaluation memory.
    max_tokens_per_pass: int = 4096 * 77

    def __init__(self, cfg, classnames: list[str], clip_model: nn.Module) -> None:
        super().__init__(cfg, classnames, clip_model, learner_cls=ConditionalPromptLearner)

    def encode_text(self, states_at: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise RuntimeError("CoCoOp's class prompts depend on the image: use encode_conditional_text(ctx)")

    def cache_text_features(self) -> None:
        """No-op: the text features depend on each test image, so there is nothing to cache."""

    def text_work(self, batch_size: int) -> TextWork:
        """What the text encoder runs with autograd in one training step: every class for every image."""
        return TextWork(self.prompt_learner.layout, batch_size, "once per image")

    def encode_conditional_text(self, ctx: torch.Tensor,
                                states_at: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text features of every class for each per-image context, batched over the images.

        Args:
            ctx: ``[B, M, d]`` per-image contexts (``conditional_context``).
            states_at: ``[M]`` positions inside the shared prefix whose states to return.

        Returns:
            ``(features [B, C, D] (L2-normalised), states [B, M, d] or None)``. With the class name
            after the context and a causal text transformer, the states at the context positions
            are the same for every class: they come from each image's prefix, computed once.
        """
        learner = self.prompt_learner
        per_image = self.text_encoder.tokens_per_pass(learner.layout, 1)
        step = max(1, self.max_tokens_per_pass // per_image)
        features, states = [], []
        for start in range(0, ctx.shape[0], step):
            out = self.text_encoder(learner.conditional_text_prompts(ctx[start : start + step]), states_at)
            features.append(out.features / out.features.norm(dim=-1, keepdim=True))
            states.append(out.states)
        return torch.cat(features), (None if states_at is None else torch.cat(states))

    def conditional_logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of image ``b`` against its own class features ``text_features[b]`` [C, D]."""
        return self.logit_scale.exp() * torch.einsum("bd,bcd->bc", image_features, text_features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image_features = self.encode_image(image)
        text, _ = self.encode_conditional_text(self.prompt_learner.conditional_context(image_features))
        return self.conditional_logits(image_features, text)

    def forward_parts(self, image: torch.Tensor, return_states: bool = False, shift: bool = False) -> ForwardPass:
        """One training pass: logits ``[B, C]``, image features ``[B, D]`` and per-image class features
        ``[B, C, D]``; with ``return_states`` also the per-image contexts ``[B, M, d]`` and their states."""
        image_features = self.encode_image(image)
        ctx = self.prompt_learner.conditional_context(image_features)
        states_at = self.prompt_learner.context_positions(shift) if return_states else None
        text, states = self.encode_conditional_text(ctx, states_at)
        fwd = ForwardPass(self.conditional_logits(image_features, text), image_features, text)
        if return_states:
            fwd.ctx, fwd.states = ctx, states
        return fwd

    def forward_with_states(self, image: torch.Tensor,
                            shift: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``[B, C]``, per-image contexts ``[B, M, d]`` and their states ``[B, M, d]`` (one text pass).

        With ``shift`` the state before each context token is used (next-token view).
        """
        fwd = self.forward_parts(image, return_states=True, shift=shift)
        return fwd.logits, fwd.ctx, fwd.states


@TRAINER_REGISTRY.register()
class CoCoOp(ClipPromptTrainer):
    """Conditional Context Optimization (CoCoOp) on CLIP; the loss is cross-entropy only."""

    PREC_KEY = "COCOOP"

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        return CoCoOpCLIP(self.cfg, classnames, clip_model)
