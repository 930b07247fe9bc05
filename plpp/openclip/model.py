"""An open_clip model behind the attribute surface of ``clip.model.CLIP`` that the hosts use.

``token_embedding``, ``transformer``, ``positional_embedding``, ``ln_final``, ``text_projection``,
``logit_scale``, ``visual``, ``dtype``, ``encode_image`` and ``encode_text`` are the open_clip model's own
modules and tensors (shared, not copied). What differs from OpenAI's CLIP is answered here, for the shared
code to ask without knowing the library: ``tokenizer`` (the model's), ``make_text_tower`` (the adapter the
text encoder runs), ``convert_weights_fp16`` (open_clip's half cast) and the image tower's
``encode_with_prompts`` / ``prompt_refusal`` (:mod:`.vision`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .text import OpenClipTextTower, OpenClipTokenizer
from .vision import OpenClipImageTower


def _text_parts(model: nn.Module) -> nn.Module:
    """The module holding the text tower's parts: ``CLIP`` itself, or ``CustomTextCLIP.text``."""
    return model.text if hasattr(model, "text") and not hasattr(model, "transformer") else model


class OpenClipModel(nn.Module):
    """A loaded open_clip ``CLIP`` / ``CustomTextCLIP`` as the hosts see a ``clip.model.CLIP``.

    ``name``/``arch``: the backbone name and open_clip architecture (for messages and the record);
    ``preprocess``: the model's preprocessing config (size, mean, std, interpolation).
    """

    def __init__(self, model: nn.Module, tokenizer, name: str, arch: str, preprocess: dict) -> None:
        super().__init__()
        self.name, self.arch, self.preprocess = name, arch, dict(preprocess)
        parts = _text_parts(model)
        self.token_embedding = parts.token_embedding
        self.transformer = parts.transformer
        self.positional_embedding = parts.positional_embedding
        self.ln_final = parts.ln_final
        self._text_projection = parts.text_projection  # a Parameter [d, D] or an nn.Linear
        mask = getattr(parts, "attn_mask", None)
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)
        self.pool_type = getattr(parts, "text_pool_type", getattr(parts, "pool_type", "argmax"))
        self.has_cls_emb = getattr(parts, "cls_emb", None) is not None
        self.visual = OpenClipImageTower(model.visual, name, preprocess)
        self.logit_scale = model.logit_scale
        self.tokenizer = OpenClipTokenizer(tokenizer, name)
        if self.tokenizer.context_length != self.positional_embedding.shape[0]:
            raise ValueError(f"open_clip model {arch}: its tokenizer's context length "
                             f"{self.tokenizer.context_length} differs from its text tower's "
                             f"{self.positional_embedding.shape[0]}")

    @property
    def text_projection(self) -> torch.Tensor:
        """``[d, D]``, as ``clip.model.CLIP.text_projection`` (an ``nn.Linear``'s weight transposed; its bias,
        if any, is applied by :meth:`project_text`)."""
        proj = self._text_projection
        return proj.weight.t() if isinstance(proj, nn.Linear) else proj

    def project_text(self, x: torch.Tensor) -> torch.Tensor:
        proj = self._text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.dtype

    def make_text_tower(self) -> OpenClipTextTower:
        return OpenClipTextTower(self)

    def convert_weights_fp16(self) -> None:
        """open_clip's own half cast (linear, conv, attention weights, the projections), plus layer scales."""
        from open_clip.model import convert_weights_to_lp
        from open_clip.transformer import LayerScale

        convert_weights_to_lp(self, torch.float16)
        if not isinstance(self._text_projection, nn.Linear):
            self._text_projection.data = self._text_projection.data.half()
        for module in self.modules():
            if isinstance(module, LayerScale):
                module.gamma.data = module.gamma.data.half()

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.to(self.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """open_clip's ``encode_text`` on token ids ``[N, L]`` (unnormalised features ``[N, D]``)."""
        dtype = self.transformer.resblocks[0].attn.in_proj_weight.dtype
        x = self.token_embedding(text).to(dtype) + self.positional_embedding.to(dtype)
        x = self.make_text_tower().run_reference(x, use_checkpoint=False)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        return self.project_text(x)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = F.normalize(self.encode_image(image), dim=-1)
        txt = F.normalize(self.encode_text(text), dim=-1)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()
