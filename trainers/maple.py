"""MaPLe: multi-modal deep prompts, vision prompts coupled to the text prompts by linear maps.

Built on the stock ``clip`` package: both towers' blocks are run by ``plpp.clip_utils`` and the
prompt tokens are replaced between blocks, so no modified copy of CLIP is needed. Layout, for
``PROMPT_DEPTH = J`` and ``N_CTX = n``:

* text: ``[SOS][ctx (n)][rest of CTX_INIT][class].`` — block 0 sees the learnable ``ctx``; before
  blocks ``1 .. J-1`` the n tokens after SOS are replaced by ``deep_text_prompts[i-1]``;
* vision: ``proj(ctx)`` (n tokens) is appended after the patch tokens; before blocks ``1 .. J-1``
  they are replaced by ``deep_projections[i-1](deep_text_prompts[i-1])``.

The linear maps go from the text width to the vision width, both read from the model. Prompt
parameters are cast to the model's dtype in the forward pass, so fp32, bf16 and fp16 all run; under
``PREC fp16`` those upstream keeps in half (``ctx``, ``proj``) are fp16 parameters, the rest fp32. The
text prompts do not depend on the image: evaluation encodes them once.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from plpp.clip_utils import encode_image_with_prompts, is_vision_transformer, token_length, tokenize
from plpp.engine import TRAINER_REGISTRY
from plpp.engine.utils import logger

from .base import ClipPromptTrainer
from .coop import CustomCLIP, PromptLearner, init_context

#: Upstream MaPLe (and IVLP, PromptSRC) initialise the context from CTX_INIT only up to this N_CTX.
UPSTREAM_MAX_INIT_CTX = 4


def add_config(cfg) -> None:
    """Declare ``TRAINER.MAPLE`` (MaPLe's keys and defaults)."""
    from yacs.config import CfgNode as CN

    if "MAPLE" in cfg.TRAINER:
        return
    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2  # learnable tokens per layer (the first N_CTX words of CTX_INIT)
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"  # prompt text; its words after the first N_CTX stay fixed
    cfg.TRAINER.MAPLE.PREC = "fp16"  # fp16 (upstream's), fp32, amp (fp32 master) or bf16; fp16/amp: fp32 on CPU
    cfg.TRAINER.MAPLE.TEXT_CHECKPOINT = "auto"  # checkpoint text activations: auto (many prompt tokens), always, never
    cfg.TRAINER.MAPLE.TEXT_PASS = "fast"  # fast: only the tokens that can change the features (exact); full: all 77
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9  # layers with prompts (1: first layer only), on both towers


def init_leading_context(n_ctx: int, ctx_init: str, clip_model: nn.Module,
                         n_copies: int | None) -> tuple[torch.Tensor, str]:
    """MaPLe's context: the embeddings of the first ``n_ctx`` tokens of ``ctx_init`` (the rest stay text).

    Returns ``(ctx [n_ctx, d], prompt prefix)``; with an empty ``ctx_init``, N(0, 0.02) and ``"X X …"``.
    Upstream (MaPLe, IVLP, PromptSRC) uses ``ctx_init`` only when ``n_ctx <= 4`` and otherwise starts
    from a random context without a word; here ``ctx_init`` is used whenever it has ``n_ctx`` tokens (one
    log line says so when ``n_ctx > 4``), and a longer ``n_ctx`` is an error instead of a silent switch.
    """
    if not ctx_init:
        return init_context(n_ctx, "", clip_model, n_copies)
    text = ctx_init.replace("_", " ")
    n_tokens = token_length(text)
    if not 1 <= n_ctx <= n_tokens:
        raise ValueError(f"TRAINER.MAPLE.N_CTX {n_ctx} must be between 1 and the {n_tokens} tokens of "
                         f"TRAINER.MAPLE.CTX_INIT '{text}'. Lower N_CTX, or set CTX_INIT '' for a random context.")
    if n_ctx > UPSTREAM_MAX_INIT_CTX:
        logger.info(f"Note: upstream MaPLe ignores CTX_INIT when N_CTX > {UPSTREAM_MAX_INIT_CTX} (a random context); "
                    f"here the context starts from the first {n_ctx} tokens of '{text}'. Set CTX_INIT '' for "
                    "upstream's random start.")
    embedding = clip_model.token_embedding
    with torch.no_grad():
        vectors = embedding(tokenize(text).to(embedding.weight.device))[0, 1 : 1 + n_ctx].float().clone()
    if n_copies is not None:
        vectors = vectors.unsqueeze(0).repeat(n_copies, 1, 1)
    return vectors, text


class MultiModalPromptLearner(PromptLearner):
    """Text context ``ctx`` [n, d], deep text prompts ``[J-1] × [n, d]`` and their maps to the vision width.

    ``proj``: Linear(d → w) gives the first-layer vision prompt from ``ctx``; ``deep_projections[i]``:
    Linear(d → w) maps ``deep_text_prompts[i]`` (all start from the same initial weights, as MaPLe's
    cloned layers do). Nothing here depends on the class list except non-persistent buffers. Under
    ``PREC fp16``, ``ctx`` and ``proj`` are fp16 and the deep prompts and their maps fp32, as upstream's.
    """

    make_context = staticmethod(init_leading_context)
    FP16_PARAMETERS = ("ctx", "proj")
    UPSTREAM_NAMES = {"compound_prompts_text": "deep_text_prompts", "compound_prompt_projections": "deep_projections"}

    def __init__(self, maple_cfg, classnames: list[str], clip_model: nn.Module) -> None:
        visual = clip_model.visual
        if not is_vision_transformer(visual):
            raise ValueError(f"MaPLe needs a ViT backbone (vision prompts are tokens), but MODEL.BACKBONE.NAME "
                             f"gives a {type(visual).__name__} image encoder. Use a ViT backbone such as ViT-B/16.")
        depth = int(maple_cfg.PROMPT_DEPTH)
        max_depth = min(len(clip_model.transformer.resblocks), len(visual.transformer.resblocks))
        if not 1 <= depth <= max_depth:
            raise ValueError(f"TRAINER.MAPLE.PROMPT_DEPTH {depth} must be between 1 and {max_depth} (the number of "
                             "transformer layers of this backbone)")
        layout = SimpleNamespace(N_CTX=maple_cfg.N_CTX, CTX_INIT=maple_cfg.CTX_INIT, CSC=False,
                                 CLASS_TOKEN_POSITION="end")
        super().__init__(layout, classnames, clip_model)
        width = self.ctx.shape[-1]
        vision_width = visual.conv1.out_channels
        self.depth = depth
        self.proj = nn.Linear(width, vision_width)
        self.deep_text_prompts = nn.ParameterList(
            [nn.Parameter(nn.init.normal_(torch.empty(self.n_ctx, width), std=0.02)) for _ in range(depth - 1)])
        template = nn.Linear(width, vision_width)
        self.deep_projections = nn.ModuleList([copy.deepcopy(template) for _ in range(depth - 1)])

    def vision_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The first-layer vision prompt ``[n, w]`` and the deeper ones ``[J-1] × [n, w]``."""
        first = self.proj(self.ctx)
        deep = [layer(prompt) for layer, prompt in zip(self.deep_projections, self.deep_text_prompts)]
        return first, deep


class MaPLeCLIP(CustomCLIP):
    """CLIP with multi-modal deep prompts: ``forward(image [B, 3, H, W]) -> logits [B, C]``.

    ``forward``, ``encode_text``, the evaluation text cache and ``forward_with_states`` come from CoOp's
    model: the context states are class-independent here too (the deep text prompts sit before the
    class name), and the prompt learner's ``text_prompts`` carries the deep prompts.
    """

    CFG_KEY = "MAPLE"

    def __init__(self, cfg, classnames: list[str], clip_model: nn.Module,
                 learner_cls: Callable[..., nn.Module] = MultiModalPromptLearner) -> None:
        super().__init__(cfg, classnames, clip_model, learner_cls=learner_cls)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        first, deep = self.prompt_learner.vision_prompts()
        feats = encode_image_with_prompts(self.image_encoder, image, first, deep)
        return feats / feats.norm(dim=-1, keepdim=True)


@TRAINER_REGISTRY.register()
class MaPLe(ClipPromptTrainer):
    """Multi-modal Prompt Learning (MaPLe) on CLIP; needs a ViT backbone."""

    PREC_KEY = "MAPLE"
    UPSTREAM_MODEL_NAMES = ("MultiModalPromptLearner",)  # upstream MaPLe's run folder of its (whole) model

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        if cfg.TRAINER.MAPLE.N_CTX < 1:
            raise ValueError(f"TRAINER.MAPLE.N_CTX must be at least 1, got {cfg.TRAINER.MAPLE.N_CTX}")
        if cfg.TRAINER.MAPLE.PROMPT_DEPTH < 1:
            raise ValueError(f"TRAINER.MAPLE.PROMPT_DEPTH must be at least 1, got {cfg.TRAINER.MAPLE.PROMPT_DEPTH}")

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        return MaPLeCLIP(self.cfg, classnames, clip_model)
