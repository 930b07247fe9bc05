"""Contrastive pretraining of the stock ``clip.model.CLIP`` on proxy-world image–caption pairs, on a CPU.

The model is OpenAI's architecture at a small size (``ARCH``: 32 px, patch 8, 4 + 4 layers of width
128, CLIP's full 49,408-word vocabulary and 77-token context), so every host, ``load_clip`` and
``clip.model.build_model`` treat it as any CLIP. Training is CLIP's symmetric InfoNCE loss with a
learnable temperature, AdamW with warm-up and cosine decay, each batch freshly drawn from the world.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plpp.clip_utils import import_clip, tokenize

from .world import caption_words, random_captions, render, sample_scenes

#: ``clip.model.CLIP`` arguments of the proxy CLIP (heads = width // 64, as ``build_model`` infers them).
ARCH: dict = dict(embed_dim=128, image_resolution=32, vision_layers=4, vision_width=128, vision_patch_size=8,
                  context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
                  transformer_layers=4)
#: CLIP's image normalisation (the ``INPUT.PIXEL_MEAN``/``PIXEL_STD`` of every trainer config).
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PretrainConfig:
    """How long and how the proxy CLIP is pretrained (everything that changes the weights)."""

    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    drawing_fraction: float = 0.2  # share of drawing-style pairs
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def build_proxy_clip(seed: int) -> nn.Module:
    """A freshly initialised proxy CLIP (CLIP's own initialisation, fp32)."""
    torch.manual_seed(seed)
    return import_clip().model.CLIP(**ARCH).float()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, 3, H, W]`` → CLIP's normalised float input (as the data loaders' ``ToTensor`` + ``Normalize``)."""
    mean = torch.tensor(PIXEL_MEAN)[:, None, None]
    std = torch.tensor(PIXEL_STD)[:, None, None]
    return (images.float() / 255 - mean) / std


def world_vocabulary() -> torch.Tensor:
    """Sorted ids of every token a caption of the world can hold (with SOT, EOT and the padding id 0)."""
    return torch.unique(tokenize(caption_words()))


def encode_captions(model: nn.Module, tokens: torch.Tensor,
                    embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``model.encode_text`` on token ids cut after the longest caption (exact: the mask is causal).

    ``embed`` maps token ids to vectors in place of ``model.token_embedding`` (the compact table).
    """
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = (embed or model.token_embedding)(tokens) + model.positional_embedding[:length]
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


class CompactEmbedding(nn.Module):
    """The rows of CLIP's token-embedding table that captions use, trained instead of the whole table.

    Rows no caption uses get no gradient, and AdamW without weight decay leaves such rows exactly as
    they are, so training the used rows alone gives the same weights for a fraction of the work
    (the table has 49,408 rows; the world's captions use about 70). ``write_back`` puts them in place.
    """

    def __init__(self, embedding: nn.Embedding, vocab: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("vocab", vocab, persistent=False)
        lookup = torch.full((embedding.num_embeddings,), -1, dtype=torch.long)
        lookup[vocab] = torch.arange(len(vocab))
        self.register_buffer("lookup", lookup, persistent=False)
        self.weight = nn.Parameter(embedding.weight.detach()[vocab].clone())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        rows = self.lookup[tokens]
        if bool((rows < 0).any()):
            raise ValueError("a caption holds a token outside the world's vocabulary (world_vocabulary)")
        return self.weight[rows]

    @torch.no_grad()
    def write_back(self, embedding: nn.Embedding) -> None:
        embedding.weight[self.vocab] = self.weight.detach()


def _param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on gains, biases, embeddings (most vocabulary rows never train)."""
    decay, no_decay = [], []
    for name, p in named:
        embedding = "embedding" in name or name == "logit_scale"
        (decay if p.ndim >= 2 and not embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(cfg: PretrainConfig, log: Callable[[str], None] = print, compact: bool = True) -> nn.Module:
    """Train a proxy CLIP from ``cfg.seed``; returns it in eval mode. Same config → same weights (CPU).

    ``compact`` trains only the used rows of the token-embedding table (:class:`CompactEmbedding`);
    ``False`` trains the whole table, the plain reference the compact path is tested against.
    """
    model = build_proxy_clip(cfg.seed).train()
    named = list(model.named_parameters())
    table = None
    if compact:
        table = CompactEmbedding(model.token_embedding, world_vocabulary())
        named = [(n, p) for n, p in named if n != "token_embedding.weight"]
        named.append(("token_embedding.compact", table.weight))
    optim = torch.optim.AdamW(_param_groups(named, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: _lr_factor(step, cfg))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    targets = torch.arange(cfg.batch_size)
    start = time.perf_counter()
    for step in range(cfg.steps):
        scenes = sample_scenes(cfg.batch_size, gen, drawing_fraction=cfg.drawing_fraction)
        images = normalize(render(scenes, gen))
        tokens = tokenize(random_captions(scenes, gen))
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(encode_captions(model, tokens, table), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.t()
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            log(f"pretraining step {step + 1}/{cfg.steps}: loss {loss.item():.3f}, "
                f"{time.perf_counter() - start:.0f} s")
    if table is not None:
        table.write_back(model.token_embedding)
    return model.eval()


@torch.no_grad()
def zero_shot_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                       template: str = "a photo of a {}.", batch_size: int = 500) -> float:
    """Top-1 accuracy (percent) of ``template`` prompts on ``uint8`` images, as ZeroshotCLIP computes it."""
    text = F.normalize(model.encode_text(tokenize([template.format(c) for c in classnames])), dim=-1)
    correct = 0
    for i in range(0, len(images), batch_size):
        feats = F.normalize(model.encode_image(normalize(images[i : i + batch_size])), dim=-1)
        correct += int(((feats @ text.t()).argmax(dim=-1) == labels[i : i + batch_size]).sum())
    return 100.0 * correct / max(1, len(images))
