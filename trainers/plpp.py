"""PLPP: the perplexity self-distillation regularizer, as a mixin any CLIP prompt host can take.

A host qualifies by giving two things: ``model.forward_parts(image, return_states=True, shift)``, a
``ForwardPass`` whose ``ctx``/``states`` are its prompt vectors and the text states aligned with them
(from the same text pass as the logits), and ``model.token_embedding`` (CLIP's frozen vocabulary table,
whose transpose is the training-free LM head). The mixin adds its two terms to whatever the host's
``forward_train`` returns, so a host's own terms (KgCoOp's distance, PromptSRC's self-regulating
terms) and update rule (ProGrad's projection) stay as they are. ``PLPP = PerplexityMixin + CoOp``;
every other ``PLPP_<host>`` is the same one line (CoCoOp: per-image context ``[B, M, d]``; MaPLe, IVLP
and PromptSRC: the first-layer text context ``[M, d]``).
"""

from __future__ import annotations

import torch

from plpp.clip_utils import decode_tokens
from plpp.engine import TRAINER_REGISTRY
from plpp.engine.utils import logger
from plpp.perplexity import nearest_words, perplexity_losses

from .base import ForwardPass, TrainOutput
from .cocoop import CoCoOp
from .coop import CoOp
from .ivlp import IVLP
from .kgcoop import KgCoOp
from .maple import MaPLe
from .prograd import ProGrad
from .promptsrc import PromptSRC

HIDDEN_CHOICES = ("before", "after")


def add_config(cfg) -> None:
    """Declare ``TRAINER.PLPP``: every choice the paper leaves open, with the project's defaults."""
    from yacs.config import CfgNode as CN

    if "PLPP" in cfg.TRAINER:
        return
    cfg.TRAINER.PLPP = CN()
    cfg.TRAINER.PLPP.PPL_WEIGHT = 0.1  # λ_ppl: weight of the perplexity (LM head learns the labels) term
    cfg.TRAINER.PLPP.IPPL_WEIGHT = 0.1  # λ_ippl: weight of the inverted perplexity term
    cfg.TRAINER.PLPP.TOPK = 10  # soft labels over the k most similar vocabulary words
    cfg.TRAINER.PLPP.TEMPERATURE = 0.1  # τ of the soft labels (cosine similarities / τ)
    cfg.TRAINER.PLPP.HARD_LABEL = False  # one-hot label at the most similar word (k = 1)
    cfg.TRAINER.PLPP.SHIFT = False  # False: state i predicts token i; True: state i-1 predicts token i
    cfg.TRAINER.PLPP.HIDDEN = "before"  # states before or after text_projection
    cfg.TRAINER.PLPP.CHUNK_SIZE = 0  # rows per vocabulary chunk (0: automatic, ~16 MiB per chunk)
    cfg.TRAINER.PLPP.LOG_WORDS = 1  # nearest words shown per context token each epoch (0: off)


class PerplexityMixin:
    """Adds ``λ_ppl·L_ppl + λ_ippl·L_ippl`` to the host's loss and logs the prompt as words each epoch."""

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        p = cfg.TRAINER.PLPP
        if p.HIDDEN not in HIDDEN_CHOICES:
            raise ValueError(f"TRAINER.PLPP.HIDDEN '{p.HIDDEN}' must be one of {', '.join(HIDDEN_CHOICES)}")
        if p.TOPK < 1:
            raise ValueError(f"TRAINER.PLPP.TOPK must be >= 1, got {p.TOPK}")
        if p.TEMPERATURE <= 0:
            raise ValueError(f"TRAINER.PLPP.TEMPERATURE must be > 0, got {p.TEMPERATURE}")
        if p.PPL_WEIGHT < 0 or p.IPPL_WEIGHT < 0:
            raise ValueError("TRAINER.PLPP.PPL_WEIGHT and IPPL_WEIGHT must be >= 0")

    def build_model(self) -> None:
        super().build_model()
        p = self.cfg.TRAINER.PLPP
        if p.HIDDEN == "after":
            proj = self.model.text_encoder.text_projection
            width = self.model.token_embedding.weight.shape[1]
            if proj.shape[1] != width:
                raise ValueError(f"TRAINER.PLPP.HIDDEN after needs text_projection to keep the width ({width}), "
                                 f"but this backbone projects to {proj.shape[1]}; use HIDDEN before")

    def perplexity_terms(self, ctx: torch.Tensor, states: torch.Tensor) -> dict[str, torch.Tensor]:
        """The PLPP terms for context vectors and their aligned text states (any leading dims)."""
        p = self.cfg.TRAINER.PLPP
        if p.HIDDEN == "after":
            states = states @ self.model.text_encoder.text_projection
        return perplexity_losses(
            ctx, states, self.model.token_embedding.weight, topk=p.TOPK, temperature=p.TEMPERATURE,
            hard=p.HARD_LABEL, chunk_size=p.CHUNK_SIZE or None,
        )

    def train_pass(self, image: torch.Tensor) -> ForwardPass:
        """The host's pass, asked also for the context vectors and their text states (same text pass)."""
        return self.model.forward_parts(image, return_states=True, shift=self.cfg.TRAINER.PLPP.SHIFT)

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        """The host's objective (cross-entropy and its own terms) plus the two PLPP terms."""
        p = self.cfg.TRAINER.PLPP
        out = super().forward_train(image, label)
        terms = self.perplexity_terms(out.forward.ctx, out.forward.states)
        out.losses["loss_ppl"] = (p.PPL_WEIGHT, terms["ppl"])
        out.losses["loss_ippl"] = (p.IPPL_WEIGHT, terms["ippl"])
        out.metrics["perplexity"] = terms["perplexity"]
        return out

    def after_epoch(self) -> None:
        super().after_epoch()
        self.log_prompt_words()

    @torch.no_grad()
    def log_prompt_words(self) -> None:
        """Log the nearest vocabulary words of each learned context token (the prompt made readable)."""
        k = self.cfg.TRAINER.PLPP.LOG_WORDS
        if k <= 0:
            return
        ctx = self.model.prompt_learner.ctx
        if ctx.dim() == 3:  # class-specific: show the first class
            ctx = ctx[0]
        idx, sims = nearest_words(ctx, self.model.token_embedding.weight, k=k)
        words = []
        for row_idx, row_sim in zip(idx.tolist(), sims.tolist()):
            names = decode_tokens(row_idx)
            words.append("/".join(f"{w}({s:.2f})" for w, s in zip(names, row_sim)) if k > 1 else names[0])
        logger.info(f"Prompt words (epoch {self.epoch + 1}): " + " ".join(words))


@TRAINER_REGISTRY.register()
class PLPP(PerplexityMixin, CoOp):
    """CoOp with the PLPP regularizer."""


@TRAINER_REGISTRY.register()
class PLPP_CoCoOp(PerplexityMixin, CoCoOp):
    """CoCoOp with the PLPP regularizer (CoPLPP): one perplexity term per image's context."""


@TRAINER_REGISTRY.register()
class PLPP_MaPLe(PerplexityMixin, MaPLe):
    """MaPLe with the PLPP regularizer on its first-layer text context."""


@TRAINER_REGISTRY.register()
class PLPP_IVLP(PerplexityMixin, IVLP):
    """IVLP with the PLPP regularizer on its first-layer text context."""


@TRAINER_REGISTRY.register()
class PLPP_PromptSRC(PerplexityMixin, PromptSRC):
    """PromptSRC with the PLPP regularizer on its first-layer text context (GPA averages it like the rest)."""


@TRAINER_REGISTRY.register()
class PLPP_KgCoOp(PerplexityMixin, KgCoOp):
    """KgCoOp with the PLPP regularizer."""


@TRAINER_REGISTRY.register()
class PLPP_ProGrad(PerplexityMixin, ProGrad):
    """ProGrad with the PLPP regularizer (its gradient is projected with the cross-entropy's)."""
