"""open_clip's text tower for the shared text encoder, and its tokenizer for the hosts and PLPP.

The tower is read, not assumed: its blocks must be open_clip's ``ResidualAttentionBlock`` (``nn.MultiheadAttention``
with optional layer scales), its mask exactly causal, its pooling at the EOT (``argmax``); batch-first or
not, as its ``Transformer`` says. Anything else is refused with one line naming the model and the reason.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from plpp.clip_utils import ClipWeightsError, deep_prompt_hook, run_blocks
from plpp.text.tower import ClipTextTower


class OpenClipTokenizer:
    """open_clip's CLIP BPE tokenizer (``SimpleTokenizer``) with the three calls the hosts make."""

    def __init__(self, tokenizer, name: str) -> None:
        if not all(hasattr(tokenizer, attr) for attr in ("encode", "decode", "eot_token_id", "context_length")):
            raise ClipWeightsError(f"open_clip model '{name}' has a {type(tokenizer).__name__} tokenizer; the prompt "
                                   "learners need open_clip's CLIP BPE tokenizer (SimpleTokenizer)")
        self.tokenizer = tokenizer
        self.context_length = int(tokenizer.context_length)

    def tokenize(self, texts: str | list[str]) -> torch.Tensor:
        """Token ids ``[N, context_length]`` (int64): SOT … EOT, then padding."""
        return self.tokenizer([texts] if isinstance(texts, str) else list(texts)).long()

    def token_length(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def decode_tokens(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([int(i)]).strip() for i in ids]


def _causal(mask: torch.Tensor | None, length: int) -> bool:
    if mask is None or mask.dim() != 2 or mask.shape[0] < length or mask.shape[1] < length:
        return False
    expected = torch.full((length, length), float("-inf")).triu_(1)
    return bool(torch.equal(mask[:length, :length].float().cpu(), expected))


def text_tower_refusal(model) -> str | None:
    """Why the text encoder cannot run this model's text tower (None: it can)."""
    from open_clip.transformer import ResidualAttentionBlock

    length = model.positional_embedding.shape[0]
    if model.has_cls_emb:
        return "its text tower pools an appended class token (CoCa), not the EOT token"
    if model.pool_type != "argmax":
        return f"its text tower pools with '{model.pool_type}', not at the EOT token (argmax)"
    if not _causal(model.attn_mask, length):
        return ("its text tower's attention mask is not causal, so a prompt's EOT state depends on the tokens "
                "after it")
    for block in model.transformer.resblocks:
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
            return (f"its text blocks are {type(block).__name__} (qk-norm, scaled or cosine attention), not "
                    "open_clip's standard ResidualAttentionBlock")
    return None


class OpenClipTextTower(ClipTextTower):
    """open_clip's text transformer: ``ResidualAttentionBlock``s (``ln_1``, ``attn``, ``ls_1``, ``ln_2``, ``mlp``,
    ``ls_2``) called with the model's causal mask; the projection may be an ``nn.Linear`` with a bias."""

    def __init__(self, model) -> None:
        reason = text_tower_refusal(model)
        if reason:
            raise ClipWeightsError(f"open_clip model '{model.name}' cannot host prompt learning: {reason}.")
        super().__init__(model)
        self.attn_mask = model.attn_mask
        self.batch_first = bool(getattr(model.transformer, "batch_first", True))
        self._projection = model._text_projection  # a Parameter [d, D] or an nn.Linear (weight [D, d], bias)

    @property
    def text_projection(self) -> torch.Tensor:
        proj = self._projection
        return proj.weight.t() if isinstance(proj, nn.Linear) else proj

    def project(self, x: torch.Tensor) -> torch.Tensor:
        proj = self._projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def run_reference(self, x: torch.Tensor, use_checkpoint: bool, deep: Sequence[torch.Tensor] = (),
                      deep_start: int = 1) -> torch.Tensor:
        length = x.shape[1]
        mask = self.attn_mask[:length, :length]
        blocks = [functools.partial(block, attn_mask=mask) for block in self.transformer.resblocks]
        hook = deep_prompt_hook(deep, deep_start) if deep else None
        if not self.batch_first:  # the blocks take [L, N, d], as the hooks do
            return run_blocks(x.permute(1, 0, 2), blocks, use_checkpoint, hook).permute(1, 0, 2)
        between = None if hook is None else (lambda i, t: hook(i, t.transpose(0, 1)).transpose(0, 1))
        return run_blocks(x, blocks, use_checkpoint, between)

    def finish(self, block: nn.Module, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        out = block.attn.out_proj
        x = x + block.ls_1(F.linear(attended.transpose(-3, -2).flatten(-2), out.weight, out.bias))
        return x + block.ls_2(block.mlp(block.ln_2(x)))
