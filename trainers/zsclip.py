"""Zero-shot CLIP: hand-crafted prompts per dataset, nothing trained (use ``train.py --eval-only``).

``ZeroshotCLIP`` uses one template per dataset; ``ZeroshotCLIP2`` averages the normalised text
features of CLIP's seven selected ImageNet templates plus the dataset's own. Both read the backbone,
``TRAINER.COOP.PREC`` and ``TRAINER.COOP.TEXT_PASS`` from CoOp's trainer configs, register no model
(so ``--model-dir`` is not needed) and encode the class prompts once, when the trainer is built: the
template's words before the class name run once per template, each name only up to its EOT.
"""

from __future__ import annotations

import torch
from torch import nn

from plpp.clip_utils import tokenize
from plpp.engine import TRAINER_REGISTRY, TrainerX
from plpp.engine.utils import logger
from plpp.text import TextEncoder, TextPrompts, text_layout

from .base import backbone_results_metadata, check_clip_cfg, load_clip_for

DEFAULT_TEMPLATE = "a photo of a {}."

#: Hand-crafted prompt per ``DATASET.NAME`` (CoOp's table); other datasets use ``DEFAULT_TEMPLATE``.
CUSTOM_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
    "FashionMNIST": "a photo of a {}.",
    "ProxyWorld": "a photo of a {}.",
    "ProxyWorldDrawing": "a photo of a {}.",
}

#: The seven ImageNet templates selected in CLIP's prompt-engineering notebook.
IMAGENET_TEMPLATES_SELECT: list[str] = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


def dataset_template(dataset_name: str) -> str:
    """The hand-crafted template of ``DATASET.NAME`` (``DEFAULT_TEMPLATE`` for datasets not in the table)."""
    if dataset_name not in CUSTOM_TEMPLATES:
        logger.info(f"No hand-crafted template for dataset '{dataset_name}'; using '{DEFAULT_TEMPLATE}'")
    return CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)


def template_prompts(clip_model: nn.Module, tokens: torch.Tensor) -> TextPrompts:
    """The text pass of token ids ``[C, L]``: the leading tokens all prompts share (e.g. ``[SOS] a photo of a``)
    form the shared prefix, found from the ids themselves."""
    embedded = clip_model.token_embedding(tokens)
    return TextPrompts.from_full(text_layout(tokens), embedded)


@torch.no_grad()
def zeroshot_text_features(clip_model: nn.Module, classnames: list[str], templates: list[str],
                           batch_size: int = 256, encoder: TextEncoder | None = None) -> torch.Tensor:
    """Class features ``[C, D]``: each template's normalised features, averaged, normalised again.

    With one template this is ``normalize(clip_model.encode_text(tokenize(prompts)))``; ``encoder``
    (default: a fast ``TextEncoder`` of ``clip_model``) decides which text pass computes it.
    """
    encoder = encoder if encoder is not None else TextEncoder(clip_model)
    device = clip_model.token_embedding.weight.device
    per_template = []
    for template in templates:
        prompts = [template.format(name.replace("_", " ")) for name in classnames]
        tokens = tokenize(prompts, clip_model).to(device)
        feats = torch.cat([encoder(template_prompts(clip_model, tokens[i : i + batch_size])).features[0]
                           for i in range(0, len(prompts), batch_size)]).float()
        per_template.append(feats / feats.norm(dim=-1, keepdim=True))
    mean = torch.stack(per_template).mean(dim=0)
    return mean / mean.norm(dim=-1, keepdim=True)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(TrainerX):
    """CLIP with the dataset's hand-crafted prompt; evaluation only."""

    PREC_KEY = "COOP"  # reuses CoOp's trainer configs (backbone, TRAINER.COOP.PREC)

    def check_cfg(self, cfg) -> None:
        check_clip_cfg(cfg, self.PREC_KEY)

    def templates(self) -> list[str]:
        return [dataset_template(self.cfg.DATASET.NAME)]

    def build_model(self) -> None:
        self.precision, clip_model = load_clip_for(self.cfg, self.PREC_KEY, self.device)
        clip_model.requires_grad_(False)
        self.clip_model = self.model = clip_model.to(self.device).eval()
        templates = self.templates()
        logger.info("Prompts: " + " | ".join(templates))
        encoder = TextEncoder(clip_model)
        encoder.mode = self.cfg.TRAINER[self.PREC_KEY].TEXT_PASS
        classnames = self.dm.dataset.classnames
        first = text_layout(tokenize([templates[0].format(c.replace("_", " ")) for c in classnames], clip_model))
        logger.info(f"Text pass (TRAINER.{self.PREC_KEY}.TEXT_PASS {encoder.mode}, first template): "
                    + encoder.describe(first, prefix_runs="once per template", per="template", device=self.device))
        with self.precision.autocast():
            self.text_features = zeroshot_text_features(clip_model, classnames, templates, encoder=encoder)

    def results_metadata(self) -> dict:
        return backbone_results_metadata(self.cfg)

    def train(self) -> None:  # type: ignore[override]
        raise RuntimeError(f"{type(self).__name__} is evaluation-only: use --eval-only")

    @torch.no_grad()
    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            feats = self.clip_model.encode_image(input).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return self.clip_model.logit_scale.exp().float() * feats @ self.text_features.t()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Zero-shot CLIP with a prompt ensemble: the 7 selected ImageNet templates plus the dataset's own."""

    def templates(self) -> list[str]:
        templates = list(IMAGENET_TEMPLATES_SELECT)
        if self.cfg.DATASET.NAME != "ImageNet":
            templates.append(dataset_template(self.cfg.DATASET.NAME))
        return templates
