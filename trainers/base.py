"""What every CLIP prompt trainer shares: loading CLIP, precision, freezing, one training step.

A host trainer sets ``PREC_KEY`` and implements ``build_custom_clip``; its training step is
``forward_train`` (logits plus weighted loss terms, from one ``train_pass``), which a host with its own
terms (KgCoOp, PromptSRC) and the PLPP mixin extend through ``super()``.
"""

from __future__ import annotations

import os.path as osp
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from plpp.clip_utils import PRECISIONS, Precision, load_clip
from plpp.engine import TrainerX, build_lr_scheduler, build_optimizer, compute_accuracy
from plpp.engine.checkpoint import CheckpointError, extract_state_dict, load_checkpoint, load_state_dict_checked
from plpp.engine.utils import logger
from plpp.provenance import KIND_OPENAI, describe_backbone, identify_backbone
from plpp.text import TEXT_PASS_CHOICES

TEXT_CHECKPOINT_CHOICES = ("auto", "always", "never")
#: ``TEXT_CHECKPOINT auto`` checkpoints the text encoder from this many tokens computed per training step
#: (per block). Unchecked, ViT-B/16's text tower keeps about 0.37 MB of fp32 activations per token
#: (benchmarks/memory.py): ≈6 GB at this many tokens. The full 77-token pass reaches it at 213 classes;
#: the fast pass computes ≈4,500 tokens for ImageNet's 1000 class prompts, so it stays unchecked.
TEXT_CHECKPOINT_AUTO_TOKENS = 16_384


def decide_text_checkpoint(setting: str, n_tokens: int, key: str = "TEXT_CHECKPOINT") -> tuple[bool, str]:
    """Whether to checkpoint the text encoder's activations, and the reason (for the log).

    ``n_tokens`` is what the text encoder computes with autograd in one step (per block: the fast pass's
    prefix and truncated prompts, or prompts × 77 for the full pass). ``auto`` turns checkpointing on
    from ``TEXT_CHECKPOINT_AUTO_TOKENS`` tokens.
    """
    if setting not in TEXT_CHECKPOINT_CHOICES:
        raise ValueError(f"{key} '{setting}' is not valid; choose one of {', '.join(TEXT_CHECKPOINT_CHOICES)}")
    if setting != "auto":
        return setting == "always", f"{key} {setting}"
    on = n_tokens >= TEXT_CHECKPOINT_AUTO_TOKENS
    return on, (f"{key} auto: {n_tokens:,} tokens computed per step, "
                f"{'≥' if on else '<'} {TEXT_CHECKPOINT_AUTO_TOKENS:,}")


@dataclass
class ForwardPass:
    """What one forward pass of a host model computed, so every loss term reuses it (nothing runs twice).

    ``image_features`` ``[B, D]`` and ``text_features`` ``[C, D]`` (CoCoOp: ``[B, C, D]``) are
    L2-normalised; ``ctx``/``states`` (the prompt vectors and the text states aligned with them, see
    ``CustomCLIP.forward_with_states``) are set only when the pass was asked for them (PLPP).
    """

    logits: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor
    ctx: torch.Tensor | None = None
    states: torch.Tensor | None = None


@dataclass
class TrainOutput:
    """One training step's result: logits, loss terms with their weights, extra metrics, and the pass."""

    logits: torch.Tensor
    losses: dict[str, tuple[float, torch.Tensor]] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    forward: ForwardPass | None = None


def check_clip_cfg(cfg, prec_key: str) -> None:
    """Validate ``TRAINER.<prec_key>.PREC`` (``TEXT_CHECKPOINT``, ``TEXT_PASS``) and a square ``INPUT.SIZE``."""
    prec = cfg.TRAINER[prec_key].PREC
    if prec not in PRECISIONS:
        raise ValueError(f"TRAINER.{prec_key}.PREC '{prec}' is not valid; choose one of {', '.join(PRECISIONS)}")
    setting = cfg.TRAINER[prec_key].TEXT_CHECKPOINT
    if setting not in TEXT_CHECKPOINT_CHOICES:
        raise ValueError(f"TRAINER.{prec_key}.TEXT_CHECKPOINT '{setting}' is not valid; choose one of "
                         f"{', '.join(TEXT_CHECKPOINT_CHOICES)}")
    text_pass = cfg.TRAINER[prec_key].TEXT_PASS
    if text_pass not in TEXT_PASS_CHOICES:
        raise ValueError(f"TRAINER.{prec_key}.TEXT_PASS '{text_pass}' is not valid; choose one of "
                         f"{', '.join(TEXT_PASS_CHOICES)} (fast: exact, only the tokens that change the features; "
                         "full: every prompt at all 77 tokens, as upstream)")
    size = tuple(cfg.INPUT.SIZE)
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"INPUT.SIZE must be square for CLIP, got {size}")


def load_clip_for(cfg, prec_key: str, device: torch.device) -> tuple[Precision, nn.Module]:
    """CLIP named by ``MODEL.BACKBONE.NAME``, cast for ``TRAINER.<prec_key>.PREC`` (still on the CPU).

    Also checks that ``INPUT.SIZE`` matches the backbone's input resolution.
    """
    logger.info(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
    precision = Precision(cfg.TRAINER[prec_key].PREC, device, key=f"TRAINER.{prec_key}.PREC")
    clip_model = precision.prepare(load_clip(cfg.MODEL.BACKBONE.NAME))
    record = identify_backbone(cfg.MODEL.BACKBONE.NAME)
    (logger.info if record["kind"] == KIND_OPENAI else logger.warning)(describe_backbone(record))
    resolution = clip_model.visual.input_resolution
    if cfg.INPUT.SIZE[0] != resolution:
        raise ValueError(f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the backbone's input resolution "
                         f"{resolution}; set INPUT.SIZE ({resolution}, {resolution})")
    return precision, clip_model


def backbone_results_metadata(cfg) -> dict:
    """``results.json``'s ``backbone_weights``: name, file, SHA-256 and kind of ``MODEL.BACKBONE.NAME``."""
    return {"backbone_weights": identify_backbone(cfg.MODEL.BACKBONE.NAME)}


class ClipPromptTrainer(TrainerX):
    """Base for CLIP prompt learners: the learner is the only registered (trained) model."""

    PREC_KEY = "COOP"  # the TRAINER.<KEY> block holding PREC and the prompt settings
    LEARNER_NAME = "prompt_learner"
    #: Other folders of a run that may hold the prompt learner's checkpoints (upstream's registered name).
    UPSTREAM_MODEL_NAMES: tuple[str, ...] = ()

    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.PREC_KEY]

    def check_cfg(self, cfg) -> None:
        check_clip_cfg(cfg, self.PREC_KEY)
        init = cfg.TRAINER[self.PREC_KEY].get("CTX_INIT", "")
        if not isinstance(init, str) and init is not False:  # False: "no words" where a train.py declares a flag
            raise ValueError(f"TRAINER.{self.PREC_KEY}.CTX_INIT must be the words to initialise the context from "
                             f"('' for a random context), got {init!r}. A train.py that declares CTX_INIT as a "
                             "flag (KgCoOp's) only allows False (a random context) for PLPP's trainers.")

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        """Return the host model; it must have a ``prompt_learner`` submodule."""
        raise NotImplementedError

    def build_model(self) -> None:
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.precision, clip_model = load_clip_for(cfg, self.PREC_KEY, self.device)
        logger.info("Building custom CLIP")
        self.model = self.build_custom_clip(classnames, clip_model)
        self.configure_text_encoder()
        if cfg.get("DISTRIBUTED", {}).get("SHARD_CLASSES", False):  # torchrun: each rank encodes a class slice
            from .sharding import shard_text_encoder

            shard_text_encoder(self.model)
        learner = self.model.prompt_learner
        for name, param in self.model.named_parameters():
            param.requires_grad_(name.startswith("prompt_learner."))
        self.precision.cast_learnable(learner)  # PREC fp16: upstream's fp16 prompt tensors (before the optimizer)
        n_train = sum(p.numel() for p in learner.parameters() if p.requires_grad)
        logger.info(f"Trainable parameters: {n_train:,} (prompt learner only)")
        if cfg.MODEL.INIT_WEIGHTS:
            self.load_init_weights(learner, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        self.optim = build_optimizer(learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.LEARNER_NAME, learner, self.optim, self.sched)
        self.scaler = self.precision.grad_scaler()

    def results_metadata(self) -> dict:
        return backbone_results_metadata(self.cfg)

    def configure_text_encoder(self) -> None:
        """Pick the text pass (``TRAINER.<KEY>.TEXT_PASS``), then turn activation checkpointing of the text
        encoder on or off (``TEXT_CHECKPOINT``) on the tokens that pass computes; one log line each."""
        encoder, work = self.model.text_encoder, self.model.text_work(self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE)
        encoder.mode = self.method_cfg.TEXT_PASS
        logger.info(f"Text pass (TRAINER.{self.PREC_KEY}.TEXT_PASS {encoder.mode}): "
                    + encoder.describe(work.layout, work.groups, work.prefix_runs, device=self.device))
        n_tokens = encoder.tokens_per_pass(work.layout, work.groups, self.device)
        key = f"TRAINER.{self.PREC_KEY}.TEXT_CHECKPOINT"
        on, reason = decide_text_checkpoint(self.method_cfg.TEXT_CHECKPOINT, n_tokens, key)
        encoder.use_checkpoint = on
        logger.info(f"Text encoder activation checkpointing: {'on' if on else 'off'} ({reason})")

    def load_init_weights(self, module: nn.Module, path: str) -> None:
        """Initialise the prompt learner from a checkpoint (ours, upstream's, or a bare state dict), strictly.

        Pickled objects in the file are skipped, never built; upstream's names are mapped as for
        ``--eval-only`` (``adapt_state_dict``).
        """
        if osp.isdir(path):
            raise CheckpointError(f"MODEL.INIT_WEIGHTS must be a checkpoint file, got the folder {path}")
        state = load_checkpoint(path, pickled_objects="skip")
        state_dict = self.adapt_state_dict(self.LEARNER_NAME, extract_state_dict(state, path), path)
        load_state_dict_checked(module, state_dict, f"MODEL.INIT_WEIGHTS {path}")
        logger.info(f"Initialised the prompt learner from {path}")

    def checkpoint_folders(self, name: str) -> tuple[str, ...]:
        """The run folders that may hold ``name``: ours, then upstream's name for the prompt learner (if any)."""
        return (name, *self.UPSTREAM_MODEL_NAMES) if name == self.LEARNER_NAME else (name,)

    def adapt_state_dict(self, name: str, state_dict: dict, source: str) -> dict:
        """Map an upstream checkpoint of the prompt learner to its names (see ``PromptLearner.from_upstream_names``)."""
        learner = self.model.prompt_learner
        if name != self.LEARNER_NAME or not hasattr(learner, "from_upstream_names"):
            return state_dict
        state_dict, notes = learner.from_upstream_names(state_dict)
        if notes:
            logger.info(f"{source}: upstream checkpoint of {type(learner).__name__}: {'; '.join(notes)}")
        return state_dict

    def train_pass(self, image: torch.Tensor) -> ForwardPass:
        """The model's forward pass in training (the PLPP mixin also asks it for the context states)."""
        return self.model.forward_parts(image)

    def forward_train(self, image: torch.Tensor, label: torch.Tensor) -> TrainOutput:
        """The host's training objective: cross-entropy on the image-text logits of ``train_pass``."""
        fwd = self.train_pass(image)
        loss_ce = F.cross_entropy(self.precision.loss_logits(fwd.logits), label)
        return TrainOutput(fwd.logits, {"loss_ce": (1.0, loss_ce)}, forward=fwd)

    def forward_backward(self, batch) -> dict:
        image, label = self.parse_batch_train(batch)
        with self.precision.autocast():
            out = self.forward_train(image, label)
        loss = sum(weight * term.float() for weight, term in out.losses.values())
        terms = {name: term.detach() for name, (_, term) in out.losses.items()}
        self.model_backward_and_update(loss, terms=terms)
        summary = {"loss": loss.item()}
        summary.update({name: term.item() for name, term in terms.items()})
        summary.update({name: float(value) for name, value in out.metrics.items()})
        summary["acc"] = compute_accuracy(out.logits.detach().float(), label)[0].item()
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def set_model_mode(self, mode: str = "train", names=None) -> None:
        super().set_model_mode(mode, names)
        clear = getattr(self.model, "clear_text_cache", None)
        if mode == "train" and clear is not None:
            clear()

    def before_test(self, split: str) -> None:
        """Prompts are fixed during evaluation: encode the class prompts once, not per test batch."""
        cache = getattr(self.model, "cache_text_features", None)
        if cache is not None:
            with self.precision.autocast():
                cache()

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            return self.model(input).float()
