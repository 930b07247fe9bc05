"""open_clip's image tower for the hosts: any tower for image features, open_clip's own ViT for vision prompts.

``OpenClipImageTower(image)`` is the tower's forward. Vision prompts (MaPLe, IVLP, PromptSRC) go through
``encode_with_prompts``, which runs the ViT's own modules batch-first with prompt tokens appended after the
patch tokens; that needs open_clip's ``VisionTransformer`` pooling its class token (no attentional pooler,
``pool_type`` ``tok``). Other towers (timm, ModifiedResNet, pooled ViTs) say why in ``prompt_refusal``, and
expose none of the ViT attributes, so ``clip_utils.is_vision_transformer`` is False for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from plpp.clip_utils import deep_prompt_hook, run_blocks

_VIT_PARTS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")


def prompt_refusal(visual: nn.Module) -> str | None:
    """Why vision prompts cannot be put into ``visual`` (None: they can)."""
    from open_clip.transformer import VisionTransformer

    kind = type(visual).__name__
    if not isinstance(visual, VisionTransformer):
        if hasattr(visual, "trunk"):
            return f"its image tower is a timm model ({kind}), not open_clip's own VisionTransformer"
        return f"its image tower is a {kind}, not a ViT (vision prompts are tokens of a ViT)"
    if getattr(visual, "attn_pool", None) is not None:
        return "its ViT pools with an attentional pooler (CoCa), which would pool the prompt tokens too"
    if getattr(visual, "pool_type", "tok") != "tok":
        return (f"its ViT pools with '{visual.pool_type}' over all tokens (prompts included), not its class "
                "token")
    if getattr(visual, "class_embedding", None) is None:
        return "its ViT has no class token"
    return None


class OpenClipImageTower(nn.Module):
    """An open_clip image tower (``self.tower``), with CLIP's ViT attributes where prompts fit."""

    def __init__(self, visual: nn.Module, name: str, preprocess: dict) -> None:
        super().__init__()
        self.tower = visual
        self.name = name
        reason = prompt_refusal(visual)
        self.prompt_refusal = None if reason is None else f"open_clip model '{name}': {reason}"
        size = preprocess.get("size", getattr(visual, "image_size", 224))
        size = size if isinstance(size, int) else tuple(size)
        if not isinstance(size, int) and len(set(size)) == 1:
            size = size[0]
        self.input_resolution = size

    def __getattr__(self, name: str):
        if name in _VIT_PARTS:
            modules = self.__dict__.get("_modules", {})
            tower = modules.get("tower")
            if tower is not None and self.__dict__.get("prompt_refusal") is None:
                return getattr(tower, name)
            raise AttributeError(f"{type(self).__name__} of a non-ViT tower has no '{name}'")
        return super().__getattr__(name)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype images go in: its first conv or linear layer's (class embeddings stay fp32 under fp16)."""
        for module in self.tower.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                return module.weight.dtype
        return next(p.dtype for p in self.tower.parameters() if p.is_floating_point())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.tower(image)
        return out[0] if isinstance(out, tuple) else out

    def encode_with_prompts(self, image: torch.Tensor, first_prompt: torch.Tensor | None = None,
                            deep_prompts: Sequence[torch.Tensor] = (), use_checkpoint: bool = False) -> torch.Tensor:
        """The ViT's forward with ``first_prompt`` [n, w] appended after the patch tokens (after the positional
        embedding, before ``ln_pre``) and ``deep_prompts[i]`` replacing them before block ``i + 1``."""
        if self.prompt_refusal:
            raise ValueError(f"cannot take vision prompts: {self.prompt_refusal}")
        vit = self.tower
        x = vit.conv1(image.to(vit.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # [B, g*g, w]
        cls = vit.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + vit.positional_embedding.to(x.dtype)
        x = vit.patch_dropout(x)
        if first_prompt is not None:
            x = torch.cat([x, first_prompt.expand(x.shape[0], -1, -1).to(x.dtype)], dim=1)
        x = vit.ln_pre(x)
        batch_first = bool(getattr(vit.transformer, "batch_first", True))
        hook = deep_prompt_hook(deep_prompts, None) if deep_prompts else None
        if batch_first:
            between = None if hook is None else (lambda i, t: hook(i, t.transpose(0, 1)).transpose(0, 1))
            x = run_blocks(x, vit.transformer.resblocks, use_checkpoint, between)[:, 0]
        else:
            x = run_blocks(x.transpose(0, 1), vit.transformer.resblocks, use_checkpoint, hook)[0]
        x = vit.ln_post(x)
        return x @ vit.proj if vit.proj is not None else x
