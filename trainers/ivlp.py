"""IVLP: independent deep prompts on both towers of CLIP (MaPLe without the vision-language coupling).

The text side is MaPLe's: ``[SOS][ctx (n)][rest of CTX_INIT][class].``, with ``deep_text_prompts[i-1]``
replacing the n tokens after SOS before text blocks ``1 .. J_t-1``. The vision side has its own learned
tokens instead of projections of the text ones: ``vision_ctx`` (``N_CTX_VISION`` tokens) is appended
after the patch tokens and ``deep_vision_prompts[i-1]`` replaces them before vision blocks
``1 .. J_v-1``; ``PROMPT_DEPTH_VISION 0`` means no vision prompts (language-only prompting). Both
passes are MaPLe's (``MaPLeCLIP.encode_text``/``encode_image``): only the prompt learner differs.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import torch
from torch import nn

from plpp.clip_utils import is_vision_transformer, token_length
from plpp.engine import TRAINER_REGISTRY
from plpp.engine.utils import logger

from .base import ClipPromptTrainer
from .coop import CustomCLIP, PromptLearner
from .maple import MaPLeCLIP, init_leading_context


def _declare(cfg, key: str, n_ctx: int, depth: int) -> None:
    """The IVLP prompt keys of ``TRAINER.<key>`` (shared by IVLP and PromptSRC, which differ in defaults)."""
    from yacs.config import CfgNode as CN

    node = cfg.TRAINER[key] = CN()
    node.N_CTX_VISION = n_ctx  # learned vision tokens per layer
    node.N_CTX_TEXT = n_ctx  # learned text tokens per layer (the first N_CTX_TEXT words of CTX_INIT)
    node.CTX_INIT = "a photo of a"  # prompt text; its words after the first N_CTX_TEXT stay fixed
    node.PREC = "fp16"  # fp16 (upstream's), fp32, amp (fp32 master) or bf16; fp16/amp: fp32 on CPU
    node.TEXT_CHECKPOINT = "auto"  # checkpoint text activations: auto (many prompt tokens), always, never
    node.TEXT_PASS = "fast"  # fast: only the tokens that can change the features (exact); full: all 77
    node.PROMPT_DEPTH_VISION = depth  # vision layers with prompts (0: none)
    node.PROMPT_DEPTH_TEXT = depth  # text layers with prompts (1: first layer only)


def add_config(cfg) -> None:
    """Declare ``TRAINER.IVLP`` (IVLP's keys and defaults)."""
    if "IVLP" not in cfg.TRAINER:
        _declare(cfg, "IVLP", n_ctx=2, depth=9)


def check_prompt_cfg(node, key: str) -> None:
    """Refuse IVLP prompt settings that cannot build a model (before CLIP is loaded)."""
    if node.N_CTX_TEXT < 1:
        raise ValueError(f"{key}.N_CTX_TEXT must be at least 1, got {node.N_CTX_TEXT}")
    if node.PROMPT_DEPTH_TEXT < 1:
        raise ValueError(f"{key}.PROMPT_DEPTH_TEXT must be at least 1 (the first-layer text context), got "
                         f"{node.PROMPT_DEPTH_TEXT}")
    if node.PROMPT_DEPTH_VISION < 0:
        raise ValueError(f"{key}.PROMPT_DEPTH_VISION must be >= 0 (0: no vision prompts), got "
                         f"{node.PROMPT_DEPTH_VISION}")
    if node.PROMPT_DEPTH_VISION > 0 and node.N_CTX_VISION < 1:
        raise ValueError(f"{key}.N_CTX_VISION must be at least 1 when PROMPT_DEPTH_VISION is "
                         f"{node.PROMPT_DEPTH_VISION}; set PROMPT_DEPTH_VISION 0 for text prompts only")


def _prompts(n: int, count: int, width: int) -> nn.ParameterList:
    return nn.ParameterList([nn.Parameter(nn.init.normal_(torch.empty(n, width), std=0.02)) for _ in range(count)])


class IndependentPromptLearner(PromptLearner):
    """Text context ``ctx`` [n_t, d] with deep text prompts ``[J_t-1] × [n_t, d]``, and its own vision
    prompts: ``vision_ctx`` [n_v, w] and ``deep_vision_prompts`` ``[J_v-1] × [n_v, w]`` (N(0, 0.02)).

    Widths come from the model; nothing here depends on the class list except non-persistent buffers.
    """

    make_context = staticmethod(init_leading_context)

    def __init__(self, node, classnames: list[str], clip_model: nn.Module, key: str = "TRAINER.IVLP") -> None:
        check_prompt_cfg(node, key)
        n_text, depth_text = int(node.N_CTX_TEXT), int(node.PROMPT_DEPTH_TEXT)
        n_vision, depth_vision = int(node.N_CTX_VISION), int(node.PROMPT_DEPTH_VISION)
        text_layers = len(clip_model.transformer.resblocks)
        if depth_text > text_layers:
            raise ValueError(f"{key}.PROMPT_DEPTH_TEXT {depth_text} must be between 1 and {text_layers} (the text "
                             "transformer's layers)")
        visual = clip_model.visual
        if depth_vision > 0:
            if not is_vision_transformer(visual):
                raise ValueError(f"{key}.PROMPT_DEPTH_VISION {depth_vision} needs a ViT backbone (vision prompts are "
                                 f"tokens), but MODEL.BACKBONE.NAME gives a {type(visual).__name__} image encoder. Use "
                                 f"a ViT backbone such as ViT-B/16, or set {key}.PROMPT_DEPTH_VISION 0.")
            vision_layers = len(visual.transformer.resblocks)
            if depth_vision > vision_layers:
                raise ValueError(f"{key}.PROMPT_DEPTH_VISION {depth_vision} must be between 0 and {vision_layers} "
                                 "(the vision transformer's layers)")
        if node.CTX_INIT:
            text = node.CTX_INIT.replace("_", " ")
            n_tokens = token_length(text)
            if n_text > n_tokens:
                raise ValueError(f"{key}.N_CTX_TEXT {n_text} is more than the {n_tokens} tokens of {key}.CTX_INIT "
                                 f"'{text}'. Lower N_CTX_TEXT, or set CTX_INIT '' for a random context.")
        layout = SimpleNamespace(N_CTX=n_text, CTX_INIT=node.CTX_INIT, CSC=False, CLASS_TOKEN_POSITION="end")
        super().__init__(layout, classnames, clip_model)
        self.deep_text_prompts = _prompts(n_text, depth_text - 1, self.ctx.shape[-1])
        if depth_vision > 0:
            width = visual.conv1.out_channels
            self.vision_ctx = nn.Parameter(nn.init.normal_(torch.empty(n_vision, width), std=0.02))
            self.deep_vision_prompts = _prompts(n_vision, depth_vision - 1, width)
        else:
            self.register_parameter("vision_ctx", None)
            self.deep_vision_prompts = nn.ParameterList()
        vision = f"{n_vision} tokens × {depth_vision} layers" if depth_vision else "none (PROMPT_DEPTH_VISION 0)"
        logger.info(f"IVLP prompts: text {n_text} tokens × {depth_text} layers, vision {vision}")

    def vision_prompts(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """The first-layer vision prompt ``[n_v, w]`` (``None`` without vision prompts) and the deeper ones."""
        return self.vision_ctx, list(self.deep_vision_prompts)


class IVLPCLIP(MaPLeCLIP):
    """CLIP with independent deep prompts: ``forward(image [B, 3, H, W]) -> logits [B, C]``.

    Text and image passes, the evaluation cache and ``forward_parts`` are MaPLe's; the prompt
    learner reads ``TRAINER.<CFG_KEY>`` (``IVLP``, or ``PROMPTSRC`` for PromptSRC).
    """

    CFG_KEY = "IVLP"

    def __init__(self, cfg, classnames: list[str], clip_model: nn.Module) -> None:
        super().__init__(cfg, classnames, clip_model,
                         learner_cls=partial(IndependentPromptLearner, key=f"TRAINER.{self.CFG_KEY}"))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        if self.prompt_learner.vision_ctx is None:  # text prompts only: the stock image tower (any backbone)
            return CustomCLIP.encode_image(self, image)
        return super().encode_image(image)


@TRAINER_REGISTRY.register()
class IVLP(ClipPromptTrainer):
    """Independent Vision-Language Prompting (deep prompts on both towers, no coupling) on CLIP."""

    PREC_KEY = "IVLP"

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        check_prompt_cfg(cfg.TRAINER[self.PREC_KEY], f"TRAINER.{self.PREC_KEY}")

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        return IVLPCLIP(self.cfg, classnames, clip_model)
