"""CLIP on the stock ``clip`` package: loading weights, precision, and running blocks with injected prompts.

Nothing here forks CLIP: transformer blocks are run one by one so that callers can checkpoint
activations or replace prompt tokens between blocks (deep prompts: the text side in ``plpp.text``, and
the vision side through ``encode_image_with_prompts``). The text encoder lives in ``plpp.text``. The
``clip`` package is the installed distribution's, loaded under a private name (:func:`import_clip`), so a
checkout's own modified ``clip/`` (MaPLe, PromptSRC, ...) can neither break nor silently change our model.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import os.path as osp
import re
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


#: The installed distributions that provide the stock ``clip`` package, in order of preference.
CLIP_DISTRIBUTIONS = ("clip-anytorch", "openai-clip", "clip")
#: The private name the stock package is loaded under (never ``clip``, which a checkout may own).
STOCK_CLIP_NAME = "plpp._stock_clip"


class ClipPackageError(RuntimeError):
    """The stock ``clip`` package is not installed where ``importlib.metadata`` can find it."""


def stock_clip_dir() -> str:
    """The folder of the installed ``clip`` distribution's package (``.../site-packages/clip``).

    Found through the installed distributions' file lists, never through ``sys.path``: a checkout's
    own ``clip/`` folder (MaPLe, PromptSRC, ... ship a modified copy) is not an installed distribution.
    """
    from importlib import metadata

    for name in CLIP_DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        init = osp.abspath(str(dist.locate_file("clip/__init__.py")))
        if osp.isfile(init):
            return osp.dirname(init)
    raise ClipPackageError(
        "The stock CLIP package is not installed (none of the distributions "
        f"{', '.join(CLIP_DISTRIBUTIONS)} provides clip/__init__.py). Install it with: pip install clip-anytorch")


def _shim_pkg_resources() -> None:
    """Give the clip packages the ``pkg_resources.packaging`` they import (setuptools ≥ 82 removed it)."""
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        import packaging
        import packaging.version

        shim = types.ModuleType("pkg_resources")
        shim.packaging = packaging  # the only attribute the clip packages use
        sys.modules["pkg_resources"] = shim


def import_clip() -> types.ModuleType:
    """The installed ``clip`` distribution's package, loaded under the private name ``plpp._stock_clip``.

    Whatever module is ``sys.modules["clip"]`` (a checkout's modified copy, imported by its own
    trainers) is neither used nor replaced: our model is always the stock one, and the checkout's
    trainers keep theirs. Submodules are ``import_clip().clip``, ``.model`` and ``.simple_tokenizer``.
    """
    module = sys.modules.get(STOCK_CLIP_NAME)
    if module is not None:
        return module
    folder = stock_clip_dir()
    _shim_pkg_resources()
    spec = importlib.util.spec_from_file_location(STOCK_CLIP_NAME, osp.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[STOCK_CLIP_NAME] = module
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pkg_resources deprecation notice
            spec.loader.exec_module(module)
            for sub in ("clip", "model", "simple_tokenizer"):
                setattr(module, sub, importlib.import_module(f"{STOCK_CLIP_NAME}.{sub}"))
    except BaseException:
        for name in [n for n in sys.modules if n == STOCK_CLIP_NAME or n.startswith(STOCK_CLIP_NAME + ".")]:
            del sys.modules[name]
        raise
    return module


def clip_models() -> dict[str, str]:
    """OpenAI model name → download URL, from the installed ``clip`` package."""
    return dict(import_clip().clip._MODELS)


def clip_cache_dir() -> str:
    return os.environ.get("PLPP_CLIP_CACHE") or osp.expanduser("~/.cache/clip")


def _sha256(path: str) -> str:
    from plpp.provenance import file_sha256  # one pass per file and run, shared with results.json's record

    return file_sha256(path)


def resolve_weights(name: str, setting: str = "MODEL.BACKBONE.NAME") -> str:
    """The local file for ``MODEL.BACKBONE.NAME``: an existing path, or an OpenAI name (cached/downloaded).

    ``setting`` is how messages call the value (e.g. ``BACKBONE`` for the demo script's variable).
    """
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


#: Keys every CLIP state dict has, whatever the image tower (``clip.model.CLIP``).
CLIP_CORE_KEYS = ("positional_embedding", "text_projection", "token_embedding.weight", "ln_final.weight")
EXPECTED_WEIGHTS = ("Expected an OpenAI CLIP release (e.g. ViT-B-16.pt) or a torch.save'd state dict of "
                    "clip.model.CLIP (e.g. from python -m plpp.tools.random_clip)")


def _few(names: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (and {len(names) - n} more)" if len(names) > n else "")


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a CLIP weights file, read without running anything stored in it.

    TorchScript archives (OpenAI's releases) go through :mod:`plpp.restricted_io`, which never runs
    their code; ``torch.save`` files are unpickled with tensors and plain containers only. A
    ``{"state_dict": ...}`` wrapper (with or without a ``plpp_origin`` marker) is unwrapped.
    """
    from plpp.restricted_io import (
        RestrictedLoadError,
        is_torchscript_archive,
        load_restricted,
        read_torchscript_state_dict,
    )

    try:
        if is_torchscript_archive(path):
            state = read_torchscript_state_dict(path)
        else:
            state = load_restricted(path)
    except RestrictedLoadError as exc:
        raise ClipWeightsError(f"Cannot read CLIP weights: {exc}. {EXPECTED_WEIGHTS}.") from None
    except OSError as exc:
        raise ClipWeightsError(f"Cannot read CLIP weights from {path} ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ClipWeightsError(f"{path} holds a {type(state).__name__}, not a CLIP state dict. {EXPECTED_WEIGHTS}.")
    others = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if others:
        raise ClipWeightsError(f"{path} is not a CLIP state dict: entries {_few(others)} are not named tensors. "
                               f"{EXPECTED_WEIGHTS}.")
    missing = [k for k in CLIP_CORE_KEYS if k not in state]
    if missing:
        held = f"it holds {len(state)} tensors, e.g. {_few(list(state), 3)}" if state else "it holds no tensors"
        raise ClipWeightsError(f"{path} is not a CLIP state dict: {_few(missing)} missing ({held}). "
                               f"{EXPECTED_WEIGHTS}.")
    return state


def _key_list(message: str, label: str) -> list[str]:
    """The key names after ``label`` in a ``load_state_dict`` error message."""
    match = re.search(label + r' in state_dict: (.*?)\.\s*(?:\n|$)', message)
    return re.findall(r'"([^"]+)"', match.group(1)) if match else []


def _build_clip(state: dict[str, torch.Tensor], path: str) -> nn.Module:
    """``clip.model.build_model`` on ``state``; a layout it does not fit is one message naming the keys."""
    try:
        return import_clip().model.build_model(dict(state))
    except KeyError as exc:
        key = exc.args[0] if exc.args else "?"
        raise ClipWeightsError(f"{path} is not a complete CLIP state dict: '{key}' is missing. "
                               f"{EXPECTED_WEIGHTS}.") from None
    except (RuntimeError, AssertionError, ValueError, IndexError, ZeroDivisionError) as exc:
        text = str(exc)
        parts = []
        for label, what in (("Missing key\\(s\\)", "missing"), ("Unexpected key\\(s\\)", "unexpected")):
            keys = _key_list(text, label)
            if keys:
                parts.append(f"{what} {_few(keys)}")
        shapes = [m.split(":")[0] for m in text.split("size mismatch for ")[1:]]
        if shapes:
            parts.append(f"wrong shape for {_few(shapes)}")
        detail = "; ".join(parts) or f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        raise ClipWeightsError(f"{path} does not fit CLIP's layout ({detail}). {EXPECTED_WEIGHTS}.") from None


def load_clip(name: str) -> nn.Module:
    """Build ``clip.model.CLIP`` on the CPU, in fp32, from a CLIP name or a local weights file."""
    path = resolve_weights(name)
    model = _build_clip(_read_state_dict(path), path)
    return model.float().eval()


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 autocast runs: CUDA devices with native bf16 (Ampere on), and other autocast devices (CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.amp.is_autocast_available(device.type)


class Precision:
    """How a CLIP model runs: ``fp32``, ``fp16`` (upstream's half precision), ``amp`` or ``bf16``.

    ``fp16`` is upstream's: CLIP's weights in half, and the prompt tensors that upstream creates in
    CLIP's dtype (``ctx``, CoCoOp's meta-net, MaPLe's ``proj``: see :meth:`cast_learnable`) trained in
    fp16 by plain SGD, with fp16 optimizer state and no loss scaling. ``amp`` keeps fp32 master weights
    and autocasts the forward pass with a gradient scaler (the recommended mixed precision). ``fp16``
    and ``amp`` fall back to fp32 on the CPU (half kernels there are slow or missing), and ``bf16``
    falls back to fp32 on a device without bf16 support, each with one log line saying so.
    """

    #: ``fp16`` prompt tensors are declared by the prompt learner in this attribute (names or name prefixes).
    LEARNER_ATTR = "FP16_PARAMETERS"

    def __init__(self, prec: str, device: torch.device, key: str = "PREC") -> None:
        if prec not in PRECISIONS:
            raise ValueError(f"{key} '{prec}' is not valid; choose one of {', '.join(PRECISIONS)}")
        self.requested = prec
        self.key = key
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
        """Cast a freshly loaded (fp32) CLIP for this precision, as the clip package does for fp16."""
        if self.mode == "fp16":
            import_clip().model.convert_weights(clip_model)
        return clip_model

    def learnable_dtype(self, learner: nn.Module, name: str) -> torch.dtype:
        """The dtype the learner's parameter ``name`` trains in: fp16 under ``fp16`` when the learner declares it."""
        if self.mode != "fp16":
            return torch.float32
        prefixes = tuple(getattr(learner, self.LEARNER_ATTR, ()))
        half = any(name == p or name.startswith(p + ".") for p in prefixes)
        return torch.float16 if half else torch.float32

    def cast_learnable(self, learner: nn.Module) -> dict[str, list[str]]:
        """Give each parameter of the prompt learner the dtype upstream trains it in; returns names per dtype.

        Under ``fp16`` the parameters the learner lists in ``FP16_PARAMETERS`` (those upstream creates in
        CLIP's dtype or ``.half()``s) become fp16, so the optimizer built on them steps and keeps its state
        in fp16, as upstream's does; the others stay fp32 as in upstream (MaPLe's and IVLP's deep prompts,
        cast to CLIP's dtype in the forward pass). In every other mode all parameters stay fp32. Call it
        before the optimizer is built; the forward passes cast prompts to the encoders' dtype either way.
        """
        names: dict[str, list[str]] = {"fp16": [], "fp32": []}
        for name, param in learner.named_parameters():
            dtype = self.learnable_dtype(learner, name)
            if param.dtype != dtype:
                param.data = param.data.to(dtype)
            names["fp16" if dtype == torch.float16 else "fp32"].append(name)
        if self.mode == "fp16" and names["fp16"]:
            logger.info(f"{self.key} fp16, as upstream: {', '.join(names['fp16'])} trained in fp16 with fp16 "
                        "optimizer state (no fp32 master copy, no loss scaling); PREC amp keeps fp32 master weights")
        return names

    def loss_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits as the host's cross-entropy takes them: in fp32, except under ``fp16``.

        Upstream's ``fp16`` computes the cross-entropy on the half logits, and its gradients then differ
        from an fp32 loss's at half precision; kept, so that ``fp16`` trains exactly what upstream trains.
        """
        return logits if self.mode == "fp16" else logits.float()

    def autocast(self):
        if self.mode == "amp":
            return torch.autocast(self.device.type, dtype=torch.float16)
        if self.mode == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def grad_scaler(self):
        return torch.amp.GradScaler(self.device.type) if self.mode == "amp" else None


def tokenize(texts: str | list[str]) -> torch.Tensor:
    """Token ids ``[N, 77]`` (int64), SOT … EOT and zero padding."""
    return import_clip().tokenize(texts).long()


def token_length(text: str) -> int:
    """Number of BPE tokens of ``text`` (without SOT/EOT)."""
    return len(import_clip().clip._tokenizer.encode(text))


def decode_tokens(ids: list[int]) -> list[str]:
    """Each token id as its text, for showing learned prompts as words."""
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

    ``start=None`` replaces the last ``n`` positions. Returns a new tensor in ``x``'s dtype. The tokens are
    expanded before the cast, so their gradient is summed over the N rows in their own dtype (fp32 prompts
    of an fp16 model: upstream MaPLe's order, and a sum that does not round in half).
    """
    n = tokens.shape[0]
    if start is None:
        start = x.shape[0] - n
    if start < 0 or start + n > x.shape[0]:
        raise ValueError(f"cannot place {n} prompt tokens at position {start} of a {x.shape[0]}-token sequence")
    block = tokens.unsqueeze(1).expand(-1, x.shape[1], -1).to(x.dtype)
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


def encode_image_with_prompts(visual: nn.Module, image: torch.Tensor, first_prompt: torch.Tensor | None = None,
                              deep_prompts: Sequence[torch.Tensor] = (), use_checkpoint: bool = False) -> torch.Tensor:
    """CLIP's ViT forward with learnable prompt tokens: image ``[B, 3, H, W]`` → features ``[B, D]``.

    ``first_prompt`` [n, w] is appended after the patch tokens (after the positional embedding, before
    ``ln_pre``); ``deep_prompts[i]`` [n, w] replaces those n tokens before block ``i + 1`` (MaPLe's
    convention). With no prompts this equals ``visual(image)``. Runs in ``visual``'s dtype (or
    autocast); prompts may be fp32 master copies, they are cast here.
    """
    if not is_vision_transformer(visual):
        raise ValueError(f"encode_image_with_prompts needs CLIP's ViT image tower, got {type(visual).__name__}")
    if deep_prompts and first_prompt is None:
        raise ValueError("deep_prompts replace the first-layer prompt tokens, so first_prompt is required")
    x = visual.conv1(image.to(visual.conv1.weight.dtype))  # [B, w, g, g]
    x = x.flatten(2).transpose(1, 2)  # [B, g*g, w]
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    if first_prompt is not None:
        x = torch.cat([x, first_prompt.expand(x.shape[0], -1, -1).to(x.dtype)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)  # [L, B, w]
    between = deep_prompt_hook(deep_prompts, None) if deep_prompts else None
    x = run_blocks(x, visual.transformer.resblocks, use_checkpoint, between)
    x = visual.ln_post(x[0])
    return x @ visual.proj if visual.proj is not None else x
