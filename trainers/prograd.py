"""ProGrad: CoOp whose update never conflicts with the zero-shot direction (prompt-aligned gradient).

Each step has two gradients per trained parameter: ``g`` of the loss (cross-entropy, plus any terms a
mixin adds) and ``g_zs`` of the zero-shot term ``T² · CE(softmax(z_zs / T), softmax(z / T))`` (the KL
to frozen CLIP's hand-crafted-prompt logits, up to a constant). When ``g · g_zs < 0`` the update is
``g − λ (g · ĝ_zs) ĝ_zs`` with ``ĝ_zs = g_zs / ‖g_zs‖``, else ``g``: with ``λ = 1`` (``LOSS.LAMBDA``,
upstream's default) it never has a negative inner product with ``g_zs``. The zero-shot term itself is
not added to the loss: it only steers (and is logged as ``loss_kl``).

This is done in the engine's one training step: the zero-shot gradient is taken first (scaled like the
loss under amp, averaged over ranks), the loss is backpropagated as usual, and the projection runs in
``before_optimizer_step`` on the averaged gradients, before the (scaler's) optimizer step.

Upstream's ``CTX_INIT: True`` (the dataset's ProGrad prompt, minus the class slot, initialising the
*last* tokens of the N_CTX context, the first ones zero) is written ``CTX_INIT: "template"`` here; see
``init_trailing_context`` for its word-count quirk, which is kept.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from plpp.clip_utils import token_length, tokenize
from plpp.engine import TRAINER_REGISTRY
from plpp.engine.distributed import all_reduce_gradients
from plpp.engine.utils import logger

from .base import TrainOutput
from .coop import CoOp, CustomCLIP, PromptLearner, init_context
from .frozen_clip import PROGRAD_TEMPLATES, template_text_features
from .zsclip import DEFAULT_TEMPLATE

#: ``TRAINER.COOP.CTX_INIT`` value meaning "the dataset's ProGrad prompt" (upstream's ``CTX_INIT: True``).
TEMPLATE_INIT = "template"
LOSS_NAMES = ("prograd",)


def add_config(cfg) -> None:
    """Declare upstream ProGrad's ``LOSS`` block (``NAME``, ``T``, ``LAMBDA``)."""
    from yacs.config import CfgNode as CN

    if "LOSS" in cfg:
        return
    cfg.LOSS = CN()
    cfg.LOSS.NAME = "prograd"  # ProGrad's loss (the only one)
    cfg.LOSS.T = 1.0  # temperature of the zero-shot term
    cfg.LOSS.LAMBDA = 1.0  # λ: strength of the projection (1: remove the whole conflicting component)


def init_trailing_context(n_ctx: int, ctx_init: str, clip_model: nn.Module,
                          n_copies: int | None) -> tuple[torch.Tensor, str]:
    """ProGrad's context ``[n_ctx, d]``: zeros, then the embeddings of ``ctx_init``'s leading tokens.

    As upstream, the number of initialised vectors is the number of *words* of ``ctx_init`` (split on
    spaces), not of its tokens: with "a type of pet, a photo of a" (8 words, 9 tokens) the last 8
    context vectors are its first 8 tokens and the 9th ("a") stays fixed text after the context.
    Without ``ctx_init``: N(0, 0.02), as CoOp.
    """
    if not ctx_init:
        return init_context(n_ctx, "", clip_model, n_copies)
    text = ctx_init.replace("_", " ")
    n_words = len(text.split(" "))
    if n_ctx < n_words:
        raise ValueError(f"TRAINER.COOP.N_CTX {n_ctx} is less than the {n_words} words of the ProGrad context "
                         f"'{text}'; raise N_CTX to at least {n_words}, or set CTX_INIT '' for a random context")
    n_tokens = token_length(text)
    if n_tokens != n_words:
        logger.info(f"Note: as upstream ProGrad, the context is initialised from the first {n_words} tokens of "
                    f"'{text}' (its word count); its other {n_tokens - n_words} token(s) stay fixed text after it")
    embedding = clip_model.token_embedding
    with torch.no_grad():
        words = embedding(tokenize(text).to(embedding.weight.device))[0, 1 : 1 + n_words].float()
    vectors = torch.zeros(n_ctx, words.shape[1], dtype=torch.float32)
    vectors[n_ctx - n_words :] = words.cpu()
    if n_copies is not None:
        vectors = vectors.unsqueeze(0).repeat(n_copies, 1, 1)
    return vectors, " ".join(["X"] * (n_ctx - n_words) + [text])


class ProGradPromptLearner(PromptLearner):
    """CoOp's prompt learner with ProGrad's context initialisation."""

    make_context = staticmethod(init_trailing_context)


def template_context(template: str) -> str:
    """The text before the class slot of a ProGrad prompt ("a type of pet, a photo of a {}." → "a type of pet, a
    photo of a")."""
    if not template.endswith(" {}."):
        raise ValueError(f"ProGrad's CTX_INIT 'template' needs a prompt ending in ' {{}}.', got '{template}'")
    return template[: -len(" {}.")]


def prograd_project(grad: torch.Tensor, guide: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """``grad − λ (grad · ĝ) ĝ`` with ``ĝ = guide / ‖guide‖`` when ``grad · guide < 0``, else ``grad``.

    A zero ``guide`` (or ``grad``) leaves ``grad`` as it is. Works on any shape (flattened dot product).
    """
    norm = guide.norm()
    if norm == 0:
        return grad
    unit = guide / norm
    dot = (grad * unit).sum()
    if dot < 0:
        return grad - lam * dot * unit
    return grad


def zero_shot_term(logits: torch.Tensor, zero_shot_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · mean_b Σ_c −softmax(z_zs/T) log softmax(z/T)`` (fp32): upstream ProGrad's ``kl_loss``."""
    teacher = F.softmax(zero_shot_logits.float() / temperature, dim=-1)
    log_student = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(teacher * log_student).sum(dim=1).mean() * temperature**2


class ProGradCLIP(CustomCLIP):
    """CoOp's model with ProGrad's context init and frozen CLIP's hand-crafted class features ``[C, D]``."""

    def __init__(self, cfg, classnames: list[str], clip_model: nn.Module, device: torch.device | str = "cpu") -> None:
        dataset = cfg.DATASET.NAME
        if dataset not in PROGRAD_TEMPLATES:
            logger.info(f"ProGrad: no hand-crafted prompt for dataset '{dataset}'; using '{DEFAULT_TEMPLATE}'")
        template = PROGRAD_TEMPLATES.get(dataset, DEFAULT_TEMPLATE)
        coop = cfg.TRAINER.COOP
        ctx_init = template_context(template) if coop.CTX_INIT == TEMPLATE_INIT else coop.CTX_INIT
        layout = SimpleNamespace(N_CTX=coop.N_CTX, CTX_INIT=ctx_init, CSC=coop.CSC,
                                 CLASS_TOKEN_POSITION=coop.CLASS_TOKEN_POSITION)
        super().__init__(cfg, classnames, clip_model,
                         learner_cls=lambda _node, names, model: ProGradPromptLearner(layout, names, model))
        logger.info(f'ProGrad hand-crafted prompt: "{template}"')
        frozen = template_text_features(clip_model, classnames, [template], device)
        self.register_buffer("zero_shot_text_features", frozen, persistent=False)

    def zero_shot_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP's logits ``[B, C]`` (fp32) for normalised image features ``[B, D]`` (CoOp's image tower
        has no prompts, so its features are frozen CLIP's)."""
        scale = self.logit_scale.exp().float()
        return scale * image_features.detach().float() @ self.zero_shot_text_features.t()


@TRAINER_REGISTRY.register()
class ProGrad(CoOp):
    """Prompt-aligned Gradient (ProGrad) on CoOp."""

    _zero_shot_loss: torch.Tensor | None = None
    _zero_shot_grads: dict[int, torch.Tensor] = {}

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        if cfg.LOSS.NAME not in LOSS_NAMES:
            raise ValueError(f"LOSS.NAME '{cfg.LOSS.NAME}' is not a ProGrad loss; use {', '.join(LOSS_NAMES)}")
        if cfg.LOSS.T <= 0:
            raise ValueError(f"LOSS.T (ProGrad's temperature) must be > 0, got {cfg.LOSS.T}")
        if cfg.LOSS.LAMBDA < 0:
            raise ValueError(f"LOSS.LAMBDA (ProGrad's λ) must be >= 0, got {cfg.LOSS.LAMBDA}")

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        return ProGradCLIP(self.cfg, classnames, clip_model, self.device)

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        out = super().forward_train(image, label)
        zs_logits = self.model.zero_shot_logits(out.forward.image_features)
        self._zero_shot_loss = zero_shot_term(out.forward.logits, zs_logits, float(self.cfg.LOSS.T))
        out.metrics["loss_kl"] = self._zero_shot_loss.detach()
        return out

    def _trained_parameters(self) -> list[torch.Tensor]:
        return [p for n in self.get_model_names() if self._optims[n] is not None
                for g in self._optims[n].param_groups for p in g["params"]]

    def model_backward(self, loss: torch.Tensor, terms: dict | None = None) -> None:
        """The zero-shot gradient first (kept aside), then the loss's, as the engine does it."""
        guide, self._zero_shot_loss = self._zero_shot_loss, None
        if guide is None:
            raise RuntimeError("ProGrad: model_backward needs the zero-shot term of the same step (forward_train)")
        self.detect_anomaly(loss, terms)
        self.detect_anomaly(guide.float(), {**(terms or {}), "loss_kl": guide.detach()})
        params = self._trained_parameters()
        (self.scaler.scale(guide) if self.scaler is not None else guide).backward(retain_graph=True)
        all_reduce_gradients(params)  # multi-process: the global batch's zero-shot gradient
        self._zero_shot_grads = {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
        for p in params:
            p.grad = None
        super().model_backward(loss, terms)

    @torch.no_grad()
    def before_optimizer_step(self, params: list[torch.Tensor]) -> None:
        """Project each parameter's gradient off the zero-shot direction where they conflict."""
        lam = float(self.cfg.LOSS.LAMBDA)
        guides, self._zero_shot_grads = self._zero_shot_grads, {}
        for p in params:
            guide = guides.get(id(p))
            if p.grad is None or guide is None:
                continue
            if not torch.isfinite(guide).all():
                if self.scaler is not None:  # amp overflow: make the scaler skip this step and lower its scale
                    p.grad.fill_(float("inf"))
                    continue
                raise FloatingPointError("ProGrad: the zero-shot term's gradient is infinite or NaN; lower OPTIM.LR "
                                         "or use PREC fp32")
            p.grad.copy_(prograd_project(p.grad, guide, lam))
