"""Frozen zero-shot CLIP references for the regularised hosts: class features from hand-written templates.

KgCoOp, ProGrad and PromptSRC pull the learned prompt towards what CLIP says with hand-written prompts.
Those class features depend only on the class names, so they are computed once when the model is
built (a non-persistent buffer: a checkpoint never holds them, and a base-trained prompt evaluated on
new classes gets the new classes' features). As upstream, they are computed in fp32 even when the
backbone runs in fp16 (a temporary fp32 copy of CLIP is made for that).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from plpp.clip_utils import tokenize
from plpp.text import TextEncoder

from .zsclip import CUSTOM_TEMPLATES, template_prompts

#: KgCoOp's hand-crafted prompts: CoOp's table, except DTD ("{} texture." there).
KGCOOP_TEMPLATES: dict[str, str] = {**CUSTOM_TEMPLATES, "DescribableTextures": "a photo of a {}, a type of texture."}

#: ProGrad's hand-crafted prompts (the class name last, so the text before it can initialise the context).
PROGRAD_TEMPLATES: dict[str, str] = {
    **{name: "a photo of a {}." for name in CUSTOM_TEMPLATES},
    "OxfordPets": "a type of pet, a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "EuroSAT": "a centered satellite photo of {}.",
    "Food101": "a type of food, a photo of {}.",
    "UCF101": "a photo of a person doing {}.",
}

#: The 60 ImageNet templates whose mean text feature is PromptSRC's frozen text reference.
PROMPTSRC_TEMPLATES: list[str] = [
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.",
    "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
]


@contextlib.contextmanager
def fp32_clip(clip_model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``clip_model`` in fp32 on ``device``: itself (moved) when it is fp32, else a temporary fp32 copy."""
    if all(p.dtype == torch.float32 for p in clip_model.parameters()):
        yield clip_model.to(device)
        return
    model = copy.deepcopy(clip_model).float().to(device)
    try:
        yield model
    finally:
        del model


@torch.no_grad()
def template_text_features(clip_model: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                           device: torch.device | str = "cpu", normalize_each: bool = True,
                           batch_size: int = 256) -> torch.Tensor:
    """Zero-shot class features ``[C, D]`` (fp32, L2-normalised) from ``templates`` (each with one ``{}``).

    With several templates the features are averaged over templates, each normalised first when
    ``normalize_each`` (CLIP's prompt ensemble) or raw (PromptSRC's ``fixed_embeddings``), then
    normalised again. Underscores in class names become spaces, as in the prompt learners.
    """
    names = [name.replace("_", " ") for name in classnames]
    total = None
    with fp32_clip(clip_model, torch.device(device)) as model:
        encoder = TextEncoder(model)  # the fast exact pass: each template's shared words once, names to their EOT
        for template in templates:
            tokens = tokenize([template.format(name) for name in names]).to(device)
            feats = torch.cat([encoder(template_prompts(model, tokens[i : i + batch_size])).features[0].float()
                               for i in range(0, len(names), batch_size)])
            if normalize_each:
                feats = feats / feats.norm(dim=-1, keepdim=True)
            total = feats if total is None else total + feats
    mean = total / len(templates)
    return mean / mean.norm(dim=-1, keepdim=True)
