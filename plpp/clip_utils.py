"""CLIP on the stock ``clip`` package: loading weights, precision, and running blocks with injected prompts.

Nothing here forks CLIP: transformer blocks are run one by one so that callers can checkpoint
activations or replace prompt tokens between blocks (deep prompts: the text side's reference pass in
``plpp.text``, and the vision side through ``encode_image_with_prompts``). The text encoder lives in
``plpp.text``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import os.path as osp
import sys
import types
from collections.abc import Sequence
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger("plpp")

PRECISIONS = ("fp16", "fp32", "amp", "bf16")


class ClipWeightsError(RuntimeError):
    """CLIP weights could not be found, downloaded or read; the message says how to provide them."""


def import_clip() -> types.ModuleType:
    """Import the ``clip`` package, shimming ``pkg_resources`` where setuptools ≥ 82 removed it."""
    if "clip.clip" in sys.modules:
        return sys.modules["clip"]
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        import packaging
        import packaging.version

        shim = types.ModuleType("pkg_resources")
        shim.packaging = packaging  # the only attribute the clip packages use
        sys.modules["pkg_resources"] = shim
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pkg_resources deprecation notice
        clip = importlib.import_module("clip")
    importlib.import_module("clip.model")
    return clip


def clip_models() -> dict[str, str]:
    """OpenAI model name → download URL, from the installed ``clip`` package."""
    return dict(import_clip().clip._MODELS)


def clip_cache_dir() -> str:
    return os.environ.get("PLPP_CLIP_CACHE") or osp.expanduser("~/.cache/clip")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_weights(name: str, setting: str = "MODEL.BACKBONE.NAME") -> str:
    """The local file for ``MODEL.BACKBONE.NAME``: an existing path, or an OpenAI name (cached/downloaded).

    ``setting`` is how messages call the value (e.g. ``BACKBONE`` for the demo script's variable).
    An ``open_clip:`` name resolves through :mod:`plpp.openclip` (its tag's file, or its path).
    """
    if _is_open_clip_name(name):
        from plpp.openclip.loading import resolve

        return resolve(name, setting)[2]
    if not name:
        raise ClipWeightsError(f"{setting} is empty: set it to a CLIP name (e.g. ViT-B/16) or a .pt file")
    expanded = osp.expanduser(name)
    if osp.isfile(expanded):
        return expanded
    models = clip_models()
    if name not in models:
        raise ClipWeightsError(
            f"{setting} '{name}' is neither an existing file nor a CLIP model name. "
            f"Use one of {', '.join(models)} or a path to a local .pt file.")
    url = models[name]
    root = clip_cache_dir()
    target = osp.join(root, osp.basename(url))
    expected = url.split("/")[-2]
    if osp.isfile(target) and _sha256(target) == expected:
        return target
    problem = "has the wrong SHA-256 (incomplete or a different file)" if osp.isfile(target) else "is missing"
    try:
        return import_clip().clip._download(url, root)
    except Exception as exc:
        raise ClipWeightsError(
            f"CLIP weights for '{name}' are not available: {target} {problem}, and downloading {url} failed "
            f"({type(exc).__name__}: {exc}). Download that file on a machine with internet access and copy it "
            f"to {target} (or set PLPP_CLIP_CACHE to its folder), or set {setting} to a local .pt "
            "file (TorchScript archive or state dict).") from None


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation notice; OpenAI ships TorchScript archives
            archive = torch.jit.load(path, map_location="cpu")
        return archive.state_dict()
    except RuntimeError:
        pass
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ClipWeightsError(f"Cannot read CLIP weights from {path} ({type(exc).__name__}: {exc}). "
                               "Expected an OpenAI TorchScript archive or a torch.save'd state dict.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "token_embedding.weight" not in state:
        raise ClipWeightsError(f"{path} is not a CLIP state dict (no 'token_embedding.weight')")
    return state


def _is_open_clip_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith("open_clip:")


def load_clip(name: str) -> nn.Module:
    """Build ``clip.model.CLIP`` on the CPU, in fp32, from a CLIP name or a local weights file.

    ``open_clip:ARCH@TAG`` / ``open_clip:ARCH@/path/file`` give an open_clip model behind the same
    attributes (:class:`plpp.openclip.model.OpenClipModel`); only then is ``open_clip`` imported.
    """
    if _is_open_clip_name(name):
        from plpp.openclip import load_open_clip

        return load_open_clip(name)
    path = resolve_weights(name)
    state = _read_state_dict(path)
    model = import_clip().model.build_model(dict(state))
    return model.float().eval()


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 autocast runs: CUDA devices with native bf16 (Ampere on), and other autocast devices (CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.amp.is_autocast_available(device.type)


class Precision:
    """How a CLIP model runs: ``fp32``, ``fp16`` (weights in half, fp32 prompt parameters), ``amp`` or ``bf16``.

    ``fp16`` and ``amp`` fall back to fp32 on the CPU (half kernels there are slow or missing), and
    ``bf16`` falls back to fp32 on a device without bf16 support, each with one log line saying so.
    In ``fp16`` the prompt parameters stay fp32 master copies (the hosts create them after ``prepare``
    and cast them in the forward pass), so the optimizer and its state work in fp32.
    """

    def __init__(self, prec: str, device: torch.device, key: str = "PREC") -> None:
        if prec not in PRECISIONS:
            raise ValueError(f"{key} '{prec}' is not valid; choose one of {', '.join(PRECISIONS)}")
        self.requested = prec
        self.device = torch.device(device)
        if self.device.type != "cuda" and prec in ("fp16", "amp"):
            logger.info(f"Note: {key} {prec} needs CUDA; running in fp32 on {self.device.type}")
            prec = "fp32"
        if prec == "bf16" and not bf16_supported(self.device):
            logger.info(f"Note: {key} bf16 is not supported on {self.device}; running in fp32")
            prec = "fp32"
        self.mode = prec

    @property
    def model_dtype(self) -> torch.dtype:
        return torch.float16 if self.mode == "fp16" else torch.float32

    def prepare(self, clip_model: nn.Module) -> nn.Module:
        """Cast a freshly loaded (fp32) CLIP for this precision, as the clip package does for fp16 (a backbone
        wrapper with its own half cast, ``convert_weights_fp16()``, e.g. open_clip's, uses that)."""
        if self.mode == "fp16":
            convert = getattr(clip_model, "convert_weights_fp16", None)
            if callable(convert):
                convert()
            else:
                import_clip().model.convert_weights(clip_model)
        return clip_model

    def autocast(self):
        if self.mode == "amp":
            return torch.autocast(self.device.type, dtype=torch.float16)
        if self.mode == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def grad_scaler(self):
        return torch.amp.GradScaler(self.device.type) if self.mode == "amp" else None


def _model_tokenizer(model: nn.Module | None):
    """The tokenizer a backbone wrapper carries (``model.tokenizer``, e.g. open_clip's), or None for CLIP's."""
    return None if model is None else getattr(model, "tokenizer", None)


def tokenize(texts: str | list[str], model: nn.Module | None = None) -> torch.Tensor:
    """Token ids ``[N, L]`` (int64), SOT … EOT and zero padding, with ``model``'s tokenizer (L = 77 for CLIP's)."""
    tokenizer = _model_tokenizer(model)
    if tokenizer is not None:
        return tokenizer.tokenize(texts)
    return import_clip().tokenize(texts).long()


def token_length(text: str, model: nn.Module | None = None) -> int:
    """Number of BPE tokens of ``text`` (without SOT/EOT), with ``model``'s tokenizer."""
    tokenizer = _model_tokenizer(model)
    if tokenizer is not None:
        return tokenizer.token_length(text)
    return len(import_clip().clip._tokenizer.encode(text))


def decode_tokens(ids: list[int], model: nn.Module | None = None) -> list[str]:
    """Each token id as its text (with ``model``'s tokenizer), for showing learned prompts as words."""
    tokenizer = _model_tokenizer(model)
    if tokenizer is not None:
        return tokenizer.decode_tokens(ids)
    tok = import_clip().clip._tokenizer
    return [tok.decode([int(i)]).strip() for i in ids]


def run_blocks(x: torch.Tensor, blocks: nn.ModuleList | nn.Sequential, use_checkpoint: bool = False,
               between: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Run transformer blocks on ``x`` [L, N, d]; ``between(i, x)`` may edit ``x`` before block ``i``.

    With ``use_checkpoint`` (while autograd records), every block but the last keeps only its input
    and recomputes its activations in the backward pass: activation memory drops from all blocks' to
    one block's, for one more forward pass of those blocks. The last block is never checkpointed: the
    backward needs its activations first, so recomputing them would cost time and save nothing.
    """
    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        if between is not None:
            x = between(i, x)
        if use_checkpoint and i < last and torch.is_grad_enabled() and x.requires_grad:
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


def replace_tokens(x: torch.Tensor, start: int | None, tokens: torch.Tensor) -> torch.Tensor:
    """Put ``tokens`` [n, w] at sequence positions ``start .. start+n`` of ``x`` [L, N, w] (all N rows).

    ``start=None`` replaces the last ``n`` positions. Returns a new tensor in ``x``'s dtype.
    """
    n = tokens.shape[0]
    if start is None:
        start = x.shape[0] - n
    if start < 0 or start + n > x.shape[0]:
        raise ValueError(f"cannot place {n} prompt tokens at position {start} of a {x.shape[0]}-token sequence")
    block = tokens.to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1)
    return torch.cat([x[:start], block, x[start + n :]], dim=0)


def deep_prompt_hook(deep_prompts: Sequence[torch.Tensor],
                     start: int | None) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """A ``between(i, x)`` hook that puts ``deep_prompts[i - 1]`` [n, w] at ``start`` before block ``i``.

    Blocks ``1 .. len(deep_prompts)`` get new prompt tokens; block 0 sees the first-layer prompts
    already in the sequence, and blocks after the last deep prompt keep the tokens they receive.
    ``start=None`` means the last ``n`` tokens (prompts appended to the sequence).
    """

    def between(i: int, x: torch.Tensor) -> torch.Tensor:
        if 1 <= i <= len(deep_prompts):
            return replace_tokens(x, start, deep_prompts[i - 1])
        return x

    return between


def is_vision_transformer(visual: nn.Module) -> bool:
    """True for CLIP's ViT image tower (``VisionTransformer``), False for the ResNet one."""
    return all(hasattr(visual, name) for name in ("conv1", "class_embedding", "transformer", "ln_post"))


def vision_prompt_refusal(visual: nn.Module) -> str | None:
    """Why vision prompts cannot go into this image tower (None: they can), for a host's one-line refusal.

    A backbone wrapper's tower says so itself (``prompt_refusal``, e.g. open_clip's timm towers); CLIP's
    ResNet towers are not ViTs.
    """
    if hasattr(visual, "prompt_refusal"):
        return visual.prompt_refusal
    if not is_vision_transformer(visual):
        return f"its image encoder is a {type(visual).__name__}, not a ViT (vision prompts are tokens of a ViT)"
    return None


def encode_image_with_prompts(visual: nn.Module, image: torch.Tensor, first_prompt: torch.Tensor | None = None,
                              deep_prompts: Sequence[torch.Tensor] = (), use_checkpoint: bool = False) -> torch.Tensor:
    """CLIP's ViT forward with learnable prompt tokens: image ``[B, 3, H, W]`` → features ``[B, D]``.

    ``first_prompt`` [n, w] is appended after the patch tokens (after the positional embedding, before
    ``ln_pre``); ``deep_prompts[i]`` [n, w] replaces those n tokens before block ``i + 1`` (MaPLe's
    convention). With no prompts this equals ``visual(image)``. Runs in ``visual``'s dtype (or
    autocast); prompts may be fp32 master copies, they are cast here.
    """
    custom = getattr(visual, "encode_with_prompts", None)  # a backbone wrapper's own ViT layout (open_clip's)
    if callable(custom):
        if deep_prompts and first_prompt is None:
            raise ValueError("deep_prompts replace the first-layer prompt tokens, so first_prompt is required")
        return custom(image, first_prompt, deep_prompts, use_checkpoint)
    if not is_vision_transformer(visual):
        raise ValueError(f"encode_image_with_prompts needs CLIP's ViT image tower, got {type(visual).__name__}")
    if deep_prompts and first_prompt is None:
        raise ValueError("deep_prompts replace the first-layer prompt tokens, so first_prompt is required")
    x = visual.conv1(image.to(visual.conv1.weight.dtype))  # [B, w, g, g]
    x = x.flatten(2).transpose(1, 2)  # [B, g*g, w]
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    if first_prompt is not None:
        x = torch.cat([x, first_prompt.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)  # [L, B, w]
    between = deep_prompt_hook(deep_prompts, None) if deep_prompts else None
    x = run_blocks(x, visual.transformer.resblocks, use_checkpoint, between)
    x = visual.ln_post(x[0])
    return x @ visual.proj if visual.proj is not None else x
