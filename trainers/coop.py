"""CoOp: learnable context vectors in front of (or around) each class name; only they are trained."""

from __future__ import annotations

import torch
from torch import nn

from plpp.clip_utils import decode_tokens, token_length, tokenize
from plpp.engine import TRAINER_REGISTRY
from plpp.engine.utils import logger
from plpp.text import TextEncoder, TextPrompts, TextWork, text_layout

from .base import ClipPromptTrainer, ForwardPass

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def add_config(cfg) -> None:
    """Declare ``TRAINER.COOP`` (CoOp's keys and defaults)."""
    from yacs.config import CfgNode as CN

    if "COOP" in cfg.TRAINER:
        return
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16  # number of context tokens
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CTX_INIT = ""  # initialise the context from this text (N_CTX = its words; shared even with CSC)
    cfg.TRAINER.COOP.PREC = "fp16"  # fp16 (upstream's), fp32, amp (fp32 master) or bf16; fp16/amp: fp32 on CPU
    cfg.TRAINER.COOP.TEXT_CHECKPOINT = "auto"  # checkpoint text activations: auto (many prompt tokens), always, never
    cfg.TRAINER.COOP.TEXT_PASS = "fast"  # fast: only the tokens that can change the features (exact); full: all 77
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end, middle or front


def init_context(n_ctx: int, ctx_init: str, clip_model: nn.Module, n_copies: int | None) -> tuple[torch.Tensor, str]:
    """Context vectors ``[M, d]`` (or ``[n_copies, M, d]``) from a text or N(0, 0.02), and the prompt prefix.

    As upstream CoOp and CoCoOp, ``M`` for a text is its number of *words* (split on single spaces) and the
    context is the embeddings of its first ``M`` BPE tokens: a word of several tokens ("low-res" is 3) leaves
    the text's last tokens as fixed text after the context, with one log line. Without a text: N(0, 0.02),
    sampled in fp32 (for CLIP's widths, multiples of 16 elements, the same numbers as upstream's fp16 draw).
    """
    embedding = clip_model.token_embedding
    width = embedding.weight.shape[1]
    if ctx_init:
        text = ctx_init.replace("_", " ")
        n_words, n_tokens = len(text.split(" ")), token_length(text)
        if n_words > n_tokens:
            raise ValueError(f"CTX_INIT '{text}' has {n_words} words (split on single spaces) but only {n_tokens} BPE "
                             "tokens, so the context would reach past the text; remove the extra spaces")
        if n_words != n_tokens:
            fixed = decode_tokens(tokenize(text)[0, 1 + n_words : 1 + n_tokens].tolist())
            logger.info(f"CTX_INIT '{text}' has {n_words} words but {n_tokens} BPE tokens: as upstream CoOp, the "
                        f"context is its first {n_words} tokens and the other {n_tokens - n_words} "
                        f"('{' '.join(fixed)}') stay fixed text after it")
        with torch.no_grad():
            vectors = embedding(tokenize(text).to(embedding.weight.device))[0, 1 : 1 + n_words].float().clone()
        if n_copies is not None:
            vectors = vectors.unsqueeze(0).repeat(n_copies, 1, 1)
        return vectors, text
    if n_ctx < 1:
        raise ValueError(f"N_CTX must be at least 1 when CTX_INIT is empty, got {n_ctx}")
    shape = (n_ctx, width) if n_copies is None else (n_copies, n_ctx, width)
    vectors = torch.empty(shape, dtype=torch.float32)
    nn.init.normal_(vectors, std=0.02)
    return vectors, " ".join(["X"] * n_ctx)


class PromptLearner(nn.Module):
    """Builds ``[SOS][ctx][class].`` prompt embeddings ``[C, 77, d]`` from learnable ``ctx``.

    The class-dependent token embeddings are non-persistent buffers, so a checkpoint holds only
    ``ctx`` and a base-trained prompt loads for any other class set. ``layout`` tells the text encoder
    what is shared: ``[SOS][ctx]`` (and any fixed words after it) when the context is shared and comes
    first; nothing with class-specific context or the class token at the front or middle.
    """

    #: ``(n_ctx, ctx_init, clip_model, n_copies) -> (ctx, prompt prefix text)``; hosts may swap it.
    make_context = staticmethod(init_context)
    #: Parameters (names or prefixes) that upstream trains in fp16 under ``PREC fp16`` (created in CLIP's
    #: dtype there); the others stay fp32. Applied by ``Precision.cast_learnable``.
    FP16_PARAMETERS: tuple[str, ...] = ("ctx",)
    #: Upstream's checkpoints of this learner: the buffers they hold that depend on the class list (dropped
    #: when read), the prefix of this learner's tensors in a whole-model checkpoint (upstream MaPLe saves its
    #: whole CustomCLIP), and upstream's names for tensors named differently here (prefixes, ``{theirs: ours}``).
    UPSTREAM_CLASS_BUFFERS: tuple[str, ...] = ("token_prefix", "token_suffix")
    UPSTREAM_MODEL_PREFIX = "prompt_learner."
    UPSTREAM_NAMES: dict[str, str] = {}

    def __init__(self, coop_cfg, classnames: list[str], clip_model: nn.Module) -> None:
        super().__init__()
        position = coop_cfg.CLASS_TOKEN_POSITION
        if position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"TRAINER.COOP.CLASS_TOKEN_POSITION '{position}' must be one of "
                             f"{', '.join(CLASS_TOKEN_POSITIONS)}")
        n_cls = len(classnames)
        csc = bool(coop_cfg.CSC)
        if csc and coop_cfg.CTX_INIT:
            logger.info("CTX_INIT is set: one shared context, as upstream CoOp; CSC applies to random init only")
            csc = False
        ctx, prefix = self.make_context(coop_cfg.N_CTX, coop_cfg.CTX_INIT, clip_model, n_cls if csc else None)
        self.ctx = nn.Parameter(ctx)
        self.n_cls, self.n_ctx = n_cls, ctx.shape[-2]
        self.csc = csc
        self.class_token_position = position
        logger.info(f'Initial context: "{prefix}" ({self.n_ctx} tokens, '
                    f'{"class-specific" if self.csc else "shared"})')
        names = [name.replace("_", " ") for name in classnames]
        name_lens = [token_length(name) for name in names]
        tokenized = tokenize([f"{prefix} {name}." for name in names])
        embedding = clip_model.token_embedding
        with torch.no_grad():
            tokens = embedding(tokenized.to(embedding.weight.device)).float()
        self.register_buffer("token_prefix", tokens[:, :1], persistent=False)
        self.register_buffer("token_suffix", tokens[:, 1 + self.n_ctx :], persistent=False)
        self.register_buffer("tokenized_prompts", tokenized, persistent=False)
        order, ctx_pos = self._layout(name_lens, tokenized.shape[1])
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("ctx_positions", ctx_pos, persistent=False)
        self.name_lens = name_lens
        if self.shared_prefix:
            self.layout = text_layout(tokenized, shared_len=1 + self.n_ctx)
        else:
            note = "class-specific context" if self.csc else f"class token at the {position}"
            self.layout = text_layout(tokenized, extend=False, note=note)

    def _layout(self, name_lens: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token order per class (from the ``end`` layout to the configured one) and where ctx lands.

        Returns ``order [C, L]`` (gather index into ``[SOS][ctx][class][rest]``) and
        ``ctx_positions [C, M]`` (the position of each context token in the final prompt).
        """
        m = self.n_ctx
        orders, positions = [], []
        for n in name_lens:
            sos, ctx, cls, rest = [0], list(range(1, 1 + m)), list(range(1 + m, 1 + m + n)), \
                list(range(1 + m + n, length))
            if self.class_token_position == "end":
                order = sos + ctx + cls + rest
            elif self.class_token_position == "front":
                order = sos + cls + ctx + rest
            else:
                half = m // 2
                order = sos + ctx[:half] + cls + ctx[half:] + rest
            orders.append(order)
            positions.append([order.index(c) for c in ctx])
        return torch.tensor(orders), torch.tensor(positions)

    @classmethod
    def from_upstream_names(cls, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Map an upstream checkpoint's tensors of this prompt learner to the names here.

        Drops ``UPSTREAM_CLASS_BUFFERS`` (upstream saves the prompt's class-dependent token embeddings and
        loads with ``strict=False``); from a whole-model checkpoint (keys under ``UPSTREAM_MODEL_PREFIX``) keeps
        only this learner's tensors (the rest is the frozen CLIP); renames ``UPSTREAM_NAMES``. Names this
        learner uses pass unchanged, so the mapping is harmless on its own checkpoints. Returns the mapped
        dict and notes saying what was changed (empty when nothing was).
        """
        notes: list[str] = []
        prefix = cls.UPSTREAM_MODEL_PREFIX
        if prefix and any(k.startswith(prefix) for k in state_dict):
            others = [k for k in state_dict if not k.startswith(prefix)]
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if others:
                groups = sorted({k.split(".")[0] + (".*" if "." in k else "") for k in others})
                notes.append(f"ignored {len(others)} tensors of the frozen model ({', '.join(groups)})")
        dropped = [k for k in cls.UPSTREAM_CLASS_BUFFERS if k in state_dict]
        if dropped:
            state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
            notes.append(f"dropped the class-dependent buffers {', '.join(dropped)}")
        mapped = {}
        for key, value in state_dict.items():
            for theirs, ours in cls.UPSTREAM_NAMES.items():
                if key == theirs or key.startswith(theirs + "."):
                    key = ours + key[len(theirs):]
                    break
            mapped[key] = value
        renamed = [f"{t}.* as {o}.*" for t, o in cls.UPSTREAM_NAMES.items()
                   if any(k == t or k.startswith(t + ".") for k in state_dict)]
        if renamed:
            notes.append("read " + ", ".join(renamed))
        return mapped, notes

    @property
    def shared_prefix(self) -> bool:
        """True when the context states are identical for all classes (shared ctx before the name)."""
        return not self.csc and self.class_token_position == "end"

    def forward(self) -> torch.Tensor:
        ctx = self.ctx if self.csc else self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix
        prompts = torch.cat([prefix.to(ctx.dtype), ctx, suffix.to(ctx.dtype)], dim=1)
        if self.class_token_position != "end":
            prompts = prompts.gather(1, self.order.unsqueeze(-1).expand(-1, -1, prompts.shape[-1]))
        return prompts

    def text_prompts(self) -> TextPrompts:
        """This pass's prompts for the text encoder: the shared prefix once, or every class's whole prompt.

        A learner with ``deep_text_prompts`` (MaPLe, IVLP, PromptSRC) has them replace the context tokens
        before blocks 1 .. J-1; they sit inside the shared prefix, so the fast text pass runs them once.
        """
        deep = tuple(getattr(self, "deep_text_prompts", ()))
        if not self.shared_prefix:
            return TextPrompts.from_full(self.layout, self(), deep)
        return TextPrompts(self.layout, self.shared_tokens(self.ctx.unsqueeze(0)), self.rest_tokens(), deep)

    def shared_tokens(self, ctx: torch.Tensor) -> torch.Tensor:
        """The shared prefix ``[G, P, d]`` for contexts ``ctx [G, M, d]``: ``[SOS][ctx]`` and any fixed words after."""
        fixed = self.layout.shared_len - 1 - self.n_ctx
        g = ctx.shape[0]
        sos = self.token_prefix[:1].to(ctx.dtype).expand(g, -1, -1)
        words = self.token_suffix[:1, :fixed].to(ctx.dtype).expand(g, -1, -1)
        return torch.cat([sos, ctx, words], dim=1)

    def rest_tokens(self) -> torch.Tensor:
        """Every class's tokens after the shared prefix ``[C, L-P, d]`` (frozen embeddings)."""
        return self.token_suffix[:, self.layout.shared_len - 1 - self.n_ctx :]

    def context_positions(self, shift: bool = False) -> torch.Tensor:
        """Where the context tokens sit: ``[M]`` when shared by all classes, else ``[C, M]``.

        With ``shift`` the position before each (the state that predicts it, next-token view).
        """
        positions = self.ctx_positions - int(shift)
        return positions[0] if self.shared_prefix else positions


class CustomCLIP(nn.Module):
    """CLIP with a prompt learner on the text side: ``forward(image) -> logits [B, C]``."""

    CFG_KEY = "COOP"  # the TRAINER.<KEY> block handed to the prompt learner

    def __init__(self, cfg, classnames: list[str], clip_model: nn.Module,
                 learner_cls: type[nn.Module] = PromptLearner) -> None:
        super().__init__()
        self.prompt_learner = learner_cls(cfg.TRAINER[self.CFG_KEY], classnames, clip_model)
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.token_embedding = clip_model.token_embedding
        self._text_cache: torch.Tensor | None = None
        self._text_cache_key: tuple = ()

    @property
    def dtype(self) -> torch.dtype:
        return self.text_encoder.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        feats = self.image_encoder(image.to(self.dtype))
        return feats / feats.norm(dim=-1, keepdim=True)

    def encode_text(self, states_at: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class features ``[C, D]`` (normalised) and the text states at ``states_at`` (see ``TextEncoder``)."""
        out = self.text_encoder(self.prompt_learner.text_prompts(), states_at)
        feats = out.features[0]
        return feats / feats.norm(dim=-1, keepdim=True), (None if out.states is None else out.states[0])

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * image_features @ text_features.t()

    def text_work(self, batch_size: int) -> TextWork:
        """What the text encoder runs with autograd in one training step: every class prompt, once."""
        return TextWork(self.prompt_learner.layout, 1, "once per step")

    def _prompt_state(self) -> tuple:
        """What the class prompts depend on: the prompt learner's tensors (storage and in-place version)."""
        learner = self.prompt_learner
        return tuple((t.data_ptr(), t._version) for t in (*learner.parameters(), *learner.buffers()))

    @torch.no_grad()
    def cache_text_features(self) -> None:
        """Encode the class prompts once for evaluation (``[C, D]``, normalised); cleared when training resumes."""
        self._text_cache = self.encode_text()[0]
        self._text_cache_key = self._prompt_state()

    def clear_text_cache(self) -> None:
        self._text_cache = None
        self._text_cache_key = ()

    def cached_text_features(self) -> torch.Tensor | None:
        """The evaluation cache, when autograd is off; re-encoded if the prompt parameters changed since."""
        if self._text_cache is None or torch.is_grad_enabled():
            return None
        if self._text_cache_key != self._prompt_state():  # e.g. weights loaded or a step taken after caching
            self.cache_text_features()
        return self._text_cache

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        text = self.cached_text_features()
        if text is None:
            text = self.encode_text()[0]
        return self.logits(self.encode_image(image), text)

    def forward_parts(self, image: torch.Tensor, return_states: bool = False, shift: bool = False) -> ForwardPass:
        """One training pass: logits with the image and class features they came from.

        With ``return_states`` the pass also carries the context vectors and the text states aligned
        with them (see ``forward_with_states``), from the same text pass as the class features.
        """
        learner = self.prompt_learner
        text, states = self.encode_text(learner.context_positions(shift) if return_states else None)
        image_features = self.encode_image(image)
        fwd = ForwardPass(self.logits(image_features, text), image_features, text)
        if return_states:
            fwd.ctx, fwd.states = self.context_vectors(), states
        return fwd

    def context_vectors(self) -> torch.Tensor:
        """The context vectors aligned with the text states: ``[M, d]`` when shared by all classes, else
        ``[C, M, d]``."""
        learner = self.prompt_learner
        if learner.shared_prefix or learner.csc:
            return learner.ctx
        return learner.ctx.unsqueeze(0).expand(learner.n_cls, -1, -1)

    def forward_with_states(self, image: torch.Tensor, shift: bool = False):
        """Logits plus the context vectors and the text states aligned with them (one text pass).

        Returns ``(logits [B, C], ctx, states)`` with ``ctx``/``states`` of shape ``[M, d]`` when the
        context states are shared by all classes (causal mask, class name after the context: they come
        from the shared prefix, computed once), else ``[C, M, d]``. With ``shift`` the state before each
        context token is used (next-token view).
        """
        fwd = self.forward_parts(image, return_states=True, shift=shift)
        return fwd.logits, fwd.ctx, fwd.states


@TRAINER_REGISTRY.register()
class CoOp(ClipPromptTrainer):
    """Context Optimization (CoOp) on CLIP."""

    PREC_KEY = "COOP"

    def build_custom_clip(self, classnames, clip_model):
        return CustomCLIP(self.cfg, classnames, clip_model)
