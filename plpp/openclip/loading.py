"""Loading an open_clip model for ``MODEL.BACKBONE.NAME``: its architecture, its weights, its preprocessing.

``open_clip:ARCH@TAG`` reads the tag's file from PLPP's open_clip cache (``PLPP_OPEN_CLIP_CACHE``, default
``~/.cache/plpp/open_clip/ARCH/TAG/``) or, failing that, from open_clip's own cache or download; when both
fail, one line says which file to put where. ``open_clip:ARCH@/path/file`` reads a local checkpoint
(``torch.save`` state dict, open_clip training checkpoint or ``.safetensors``). ``open_clip:ARCH`` alone is
refused: a randomly initialised backbone gives numbers that mean nothing. Weights are read as tensors only,
never by running code stored in the file.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import os.path as osp
import warnings

import torch

from plpp.clip_utils import ClipWeightsError
from plpp.provenance import ORIGIN_KEY

from .names import OpenClipName, import_open_clip, parse_open_clip_name

#: Entries of OpenAI's releases that are not weights (open_clip's model has no such parameters).
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")


def open_clip_cache_dir() -> str:
    return os.environ.get("PLPP_OPEN_CLIP_CACHE") or osp.expanduser("~/.cache/plpp/open_clip")


def arch_config(arch: str, name: str, setting: str = "MODEL.BACKBONE.NAME") -> dict:
    """open_clip's architecture config of ``arch`` (a deep copy), or one line naming close matches."""
    oc = import_open_clip(name, setting)
    config = oc.get_model_config(arch)
    if config is None:
        known = oc.list_models()
        close = difflib.get_close_matches(arch, known, n=4, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else f"e.g. {', '.join(known[:4])}"
        raise ClipWeightsError(f"{setting} '{name}': '{arch}' is not an open_clip architecture ({hint}; "
                               "open_clip.list_models() lists all)")
    return config


def refusal(config: dict, arch: str) -> str | None:
    """Why an architecture's text tower cannot host prompt learning (None: it can), from its config alone."""
    text = config.get("text_cfg", {})
    if "hf_model_name" in text:
        return (f"its text tower is the Hugging Face model {text['hf_model_name']}, not a CLIP-style causal "
                "text transformer")
    if text.get("no_causal_mask", False):
        return ("its text tower has no causal attention mask (bidirectional, as SigLIP's), so a prompt's EOT "
                "state depends on the tokens after it and the prompt learners' text pass does not apply")
    if text.get("embed_cls", False):
        return "its text tower pools an appended class token (CoCa), not the EOT token the prompts end with"
    if text.get("hf_tokenizer_name"):
        return (f"its tokenizer is Hugging Face's {text['hf_tokenizer_name']}; the prompt learners need open_clip's "
                "CLIP BPE tokenizer (whose EOT has the largest id, where the prompts are pooled)")
    pool = text.get("pool_type", "argmax")
    if pool != "argmax":
        return (f"its text tower pools with '{pool}', not at the EOT token (argmax), where the prompt "
                "learners read each prompt's feature")
    if text.get("proj_type", "linear") == "none" or not config.get("embed_dim"):
        return "its text tower has no projection to the joint embedding"
    return None


def check_supported(config: dict, arch: str, name: str, setting: str = "MODEL.BACKBONE.NAME") -> None:
    reason = refusal(config, arch)
    if reason:
        raise ClipWeightsError(f"{setting} '{name}': open_clip model {arch} cannot be used: {reason}.")


def _tag_source(cfg: dict) -> tuple[str, str]:
    """``(url, filename)`` of a pretrained tag's weights file."""
    hub = cfg.get("hf_hub", "")
    if hub:
        model_id, filename = osp.split(hub)  # "org/model/" names the default file
        filename = filename or "open_clip_pytorch_model.bin"
        return f"https://huggingface.co/{model_id}/resolve/main/{filename}", filename
    url = cfg.get("url", "")
    return url, osp.basename(url.split("?")[0]) or "weights.bin"


def tag_config(arch: str, tag: str, name: str, setting: str = "MODEL.BACKBONE.NAME") -> dict:
    """open_clip's pretrained config of ``ARCH@TAG``, or one line listing the architecture's tags."""
    oc = import_open_clip(name, setting)
    cfg = oc.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = oc.list_pretrained_tags_by_model(arch)
        listed = ", ".join(tags) if tags else "none: use open_clip:ARCH@/path/to/weights"
        raise ClipWeightsError(f"{setting} '{name}': '{tag}' is not a pretrained tag of open_clip's {arch} "
                               f"(its tags: {listed}); a local file needs a path (open_clip:{arch}@/path/file)")
    return cfg


def resolve_tag(arch: str, tag: str, name: str, setting: str = "MODEL.BACKBONE.NAME") -> str:
    """The local file of ``ARCH@TAG``: PLPP's open_clip cache, else open_clip's cache or download."""
    cfg = tag_config(arch, tag, name, setting)
    url, filename = _tag_source(cfg)
    target = osp.join(open_clip_cache_dir(), arch, tag, filename)
    if osp.isfile(target):
        return target
    oc = import_open_clip(name, setting)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = oc.pretrained.download_pretrained(cfg)
        if path and osp.isfile(path):
            return path
        problem = "open_clip returned no file"
    except Exception as exc:  # noqa: BLE001 (network, hub and cache errors all end in the same advice)
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    raise ClipWeightsError(
        f"open_clip weights for '{name}' are not available: {target} is missing and downloading them failed "
        f"({problem}). Download {url} on a machine with internet access and copy it to {target} (or set "
        f"PLPP_OPEN_CLIP_CACHE to the folder holding {arch}/{tag}/{filename}), or set {setting} to "
        f"open_clip:{arch}@/path/to/{filename}.")


def read_weights(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The tensors of a weights file and its ``plpp_origin`` marker (if any), without running stored code."""
    if not osp.isfile(path):
        raise ClipWeightsError(f"open_clip weights file {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ClipWeightsError(f"{path} is a .safetensors file, and the safetensors package is not "
                                       "installed (it comes with open-clip-torch): pip install safetensors") from None
            state = load_file(path, device="cpu")
        else:
            state = _load_tensors(path)
    except ClipWeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 (corrupt, truncated or foreign files: one line)
        raise ClipWeightsError(f"Cannot read open_clip weights from {path} ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}). Expected a torch.save'd "
                               "state dict, an open_clip training checkpoint or a .safetensors file.") from None
    origin = None
    if isinstance(state, dict):
        origin = state.get(ORIGIN_KEY) if isinstance(state.get(ORIGIN_KEY), dict) else None
        if isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ClipWeightsError(f"{path} holds a {type(state).__name__}, not an open_clip state dict")
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise ClipWeightsError(f"{path} is not an open_clip state dict: entries {', '.join(bad[:4])} are not "
                               "named tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k not in NON_WEIGHT_KEYS}
    return state, origin


def _load_tensors(path: str):
    """Tensors and plain containers only (:mod:`plpp.restricted_io`: nothing stored in the file runs); OpenAI's
    TorchScript releases (the ``openai`` tags) are read the same way."""
    from plpp.restricted_io import is_torchscript_archive, load_restricted, read_torchscript_state_dict

    if is_torchscript_archive(path):
        return read_torchscript_state_dict(path)
    return load_restricted(path)


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


@contextlib.contextmanager
def quiet():
    """Silence open_clip's log and warnings while it builds a model (its "initialized randomly" warning is
    about the init that the weights replace right after)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def build_model(arch: str, quick_gelu: bool, name: str, setting: str):
    """open_clip's model of ``arch`` (its own random init, replaced by the weights right after)."""
    oc = import_open_clip(name, setting)
    with quiet():
        return oc.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)


def load_weights_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str, arch: str) -> None:
    """Load ``state`` strictly; a layout that does not fit is one line naming the keys."""
    if hasattr(model, "text") and "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        from open_clip.model import convert_to_custom_text_state_dict

        state = convert_to_custom_text_state_dict(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{what} {_few(keys)}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape for", shapes)) if keys]
        raise ClipWeightsError(f"{path} does not fit open_clip's {arch} ({'; '.join(parts)}). Check the "
                               "architecture after 'open_clip:' matches the file.")
    model.load_state_dict({k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()})


def resolve(name: str, setting: str = "MODEL.BACKBONE.NAME") -> tuple[OpenClipName, dict, str, dict | None]:
    """``(parsed name, architecture config, weights file, tag config)`` of an ``open_clip:`` name."""
    parsed = parse_open_clip_name(name, setting)
    config = arch_config(parsed.arch, name, setting)
    check_supported(config, parsed.arch, name, setting)
    if parsed.tag is None and parsed.path is None:
        tags = import_open_clip(name, setting).list_pretrained_tags_by_model(parsed.arch)
        hint = f"one of its tags ({', '.join(tags)})" if tags else "a tag"
        raise ClipWeightsError(
            f"{setting} '{name}' gives no weights, and a randomly initialised backbone is refused (its numbers "
            f"would mean nothing). Use open_clip:{parsed.arch}@TAG with {hint}, or open_clip:{parsed.arch}@/path/"
            f"to/weights (for a pipeline check: python -m plpp.tools.random_clip --open-clip {parsed.arch} -o FILE).")
    tag_cfg = None
    if parsed.tag is not None:
        tag_cfg = tag_config(parsed.arch, parsed.tag, name, setting)
        path = resolve_tag(parsed.arch, parsed.tag, name, setting)
    else:
        path = parsed.path
        if not osp.isfile(path):
            raise ClipWeightsError(f"{setting} '{name}': the weights file {path} does not exist")
    return parsed, config, path, tag_cfg


def preprocess_config(name: str, setting: str = "MODEL.BACKBONE.NAME") -> dict:
    """The model's preprocessing (``size``, ``mean``, ``std``, ``interpolation``, ``resize_mode``), from its
    architecture config and its tag's, without reading any weights."""
    oc = import_open_clip(name, setting)
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    parsed = parse_open_clip_name(name, setting)
    config = arch_config(parsed.arch, name, setting)
    pp = merge_preprocess_dict(PreprocessCfg(), config.get("preprocess_cfg", {}))
    size = config.get("vision_cfg", {}).get("image_size")
    if size is not None:
        pp["size"] = size
    if parsed.tag is not None and oc.get_pretrained_cfg(parsed.arch, parsed.tag):
        pp = merge_preprocess_dict(pp, oc.get_pretrained_cfg(parsed.arch, parsed.tag))
    return pp


def load_open_clip(name: str, setting: str = "MODEL.BACKBONE.NAME"):
    """``open_clip:ARCH@TAG`` / ``open_clip:ARCH@/path/file`` → :class:`~plpp.openclip.model.OpenClipModel`."""
    from .model import OpenClipModel

    parsed, config, path, tag_cfg = resolve(name, setting)
    state, origin = read_weights(path)
    quick = bool(config.get("quick_gelu", False) or (tag_cfg or {}).get("quick_gelu", False)
                 or (origin or {}).get("quick_gelu", False))
    model = build_model(parsed.arch, quick, name, setting)
    load_weights_into(model, state, path, parsed.arch)
    tokenizer = import_open_clip(name, setting).get_tokenizer(parsed.arch)
    pp = preprocess_config(name, setting)
    return OpenClipModel(model, tokenizer, name=name, arch=parsed.arch, preprocess=pp).float().eval()
