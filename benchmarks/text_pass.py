"""The fast text pass against the full 77-token pass: speed of a training step and of the text pass, and equality.

For each host (CoOp, PLPP, CoCoOp, MaPLe) one model is built on random CLIP weights with ImageNet's
class names (torchvision's weights metadata, no download); the two passes (``TEXT_PASS full`` and
``fast``) run on that same model in one process. Each path's ``TEXT_CHECKPOINT`` is decided by ``auto``
on the tokens that path computes, as a trainer does (``--text-checkpoint`` forces one setting for both).

1. Equality and warm-up: one forward and backward of the training objective per path from the same
   parameters; the logits and every prompt parameter's gradient are compared (largest difference over
   the largest reference value).
2. Timing, alternated round by round: a training step (forward, backward, SGD step) and the text pass
   alone (the class features' forward and backward, as inside a step) of each path; medians of the
   wall-clock time (``*_s``) and of the process's CPU time (``*_cpu_s``, all threads). On a machine shared
   with other jobs the CPU time is the steadier measure of the work each path does.

    python benchmarks/text_pass.py --json                                   # tiny widths: minutes
    python benchmarks/text_pass.py --arch vit_b16 --classes 1000 --json     # the headline (≈1 h on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import (  # noqa: E402
    ARCHS,
    device_name,
    imagenet_classnames,
    print_report,
    random_clip,
)
from plpp.engine import get_cfg_default  # noqa: E402
from plpp.perplexity import perplexity_losses  # noqa: E402
from plpp.trainers import extend_cfg  # noqa: E402
from plpp.trainers.base import decide_text_checkpoint  # noqa: E402
from plpp.trainers.cocoop import CoCoOpCLIP  # noqa: E402
from plpp.trainers.coop import CustomCLIP  # noqa: E402
from plpp.trainers.maple import MaPLeCLIP  # noqa: E402

HOSTS = ("coop", "plpp", "cocoop", "maple")
#: The issue's targets at 1000 ImageNet classes, ViT-B/16, batch 32 (CoCoOp: 1), fp32.
TARGETS = {"text_speedup": {"coop": 8.0, "plpp": 8.0}, "step_speedup": {"coop": 5.0, "plpp": 5.0, "cocoop": 5.0,
                                                                         "maple": 3.0}, "max_rel_diff": 1e-5}


def build(host: str, arch: str, classnames: list[str], device: torch.device, n_ctx: int):
    """The host's model (random CLIP weights, perturbed prompt parameters), its SGD, and the PLPP config."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.COOP.N_CTX = n_ctx
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = min(cfg.TRAINER.MAPLE.PROMPT_DEPTH, ARCHS[arch]["transformer_layers"])
    cls = {"coop": CustomCLIP, "plpp": CustomCLIP, "cocoop": CoCoOpCLIP, "maple": MaPLeCLIP}[host]
    if host == "cocoop":  # configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml
        cfg.TRAINER.COCOOP.N_CTX, cfg.TRAINER.COCOOP.CTX_INIT = 4, "a photo of a"
    model = cls(cfg, classnames, random_clip(arch)).to(device)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("prompt_learner."))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.prompt_learner.parameters():
            p.add_(0.02 * torch.randn_like(p))
    optim = torch.optim.SGD(model.prompt_learner.parameters(), lr=1e-3, momentum=0.9)
    return cfg, model, optim


def make_steps(host: str, cfg, model, image: torch.Tensor, label: torch.Tensor):
    """``objective() -> (loss, logits)`` of the host's training step, and ``text_loss() -> loss`` of its text pass."""
    p = cfg.TRAINER.PLPP
    learner = model.prompt_learner

    def objective():
        if host != "plpp":
            logits = model(image)
            return F.cross_entropy(logits.float(), label), logits
        logits, ctx, states = model.forward_with_states(image)
        terms = perplexity_losses(ctx, states, model.token_embedding.weight, topk=p.TOPK, temperature=p.TEMPERATURE)
        loss = F.cross_entropy(logits.float(), label) + p.PPL_WEIGHT * terms["ppl"] + p.IPPL_WEIGHT * terms["ippl"]
        return loss, logits

    if host == "cocoop":
        with torch.no_grad():
            image_features = model.encode_image(image)

        def text_loss():
            feats = model.encode_conditional_text(learner.conditional_context(image_features))[0]
            return feats.float().sum()
    else:
        def text_loss():
            feats, states = model.encode_text(learner.context_positions() if host == "plpp" else None)
            return feats.float().sum() + (0.0 if states is None else states.float().sum())

    return objective, text_loss


def alternate(steps: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, dict]:
    """Each step's wall-clock and CPU seconds per call, the steps run in alternation ``repeats`` times."""
    samples: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            samples[name]["wall"].append(time.perf_counter() - wall)
            samples[name]["cpu"].append(time.process_time() - cpu)
    return samples


def set_path(model, mode: str, checkpoint: bool) -> None:
    model.text_encoder.mode = mode
    model.text_encoder.use_checkpoint = checkpoint


def gradients_and_logits(model, objective) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, logits = objective()
    loss.backward()
    return logits.detach().float(), {n: q.grad.detach().clone() for n, q in model.prompt_learner.named_parameters()}


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30)).item()


def measure(host: str, args: argparse.Namespace, classnames: list[str], device: torch.device) -> dict:
    batch = args.cocoop_batch_size if host == "cocoop" else args.batch_size
    cfg, model, optim = build(host, args.arch, classnames, device, args.n_ctx)
    res = ARCHS[args.arch]["image_resolution"]
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, res, res, generator=gen).to(device)
    label = torch.randint(0, len(classnames), (batch,), generator=gen).to(device)
    objective, text_loss = make_steps(host, cfg, model, image, label)
    work = model.text_work(batch)
    tokens, checkpointed = {}, {}
    for mode in ("full", "fast"):
        model.text_encoder.mode = mode
        tokens[mode] = model.text_encoder.tokens_per_pass(work.layout, work.groups, device)
        checkpointed[mode] = decide_text_checkpoint(args.text_checkpoint, tokens[mode])[0]

    # 1. equality, from the same parameters (this is also each path's warm-up)
    outputs = {}
    for mode in ("full", "fast"):
        set_path(model, mode, checkpointed[mode])
        outputs[mode] = gradients_and_logits(model, objective)
    (logits_full, grads_full), (logits_fast, grads_fast) = outputs["full"], outputs["fast"]
    diff_grad = {name: rel_diff(grads_fast[name], grads_full[name]) for name in grads_full}

    # 2. timing, alternated
    def step(mode: str) -> Callable[[], None]:
        def run() -> None:
            set_path(model, mode, checkpointed[mode])
            optim.zero_grad(set_to_none=True)
            objective()[0].backward()
            optim.step()
        return run

    def text(mode: str) -> Callable[[], None]:
        def run() -> None:
            set_path(model, mode, checkpointed[mode])
            model.zero_grad(set_to_none=True)
            text_loss().backward()
        return run

    samples = alternate({"full_step": step("full"), "fast_step": step("fast"), "full_text": text("full"),
                         "fast_text": text("fast")}, args.repeats, device)
    wall = {name: statistics.median(s["wall"]) for name, s in samples.items()}
    cpu = {name: statistics.median(s["cpu"]) for name, s in samples.items()}
    row = {
        "host": host, "n_classes": len(classnames), "batch_size": batch,
        "prompts": work.groups * work.layout.n_prompts,
        "shared_prefix_tokens": work.layout.shared_len,
        "buckets": len(model.text_encoder.plan(work.layout, work.groups, device).buckets),
        "tokens_computed": tokens["fast"], "tokens_full": tokens["full"],
        "token_fraction": tokens["fast"] / tokens["full"],
        "full_checkpointed": checkpointed["full"], "fast_checkpointed": checkpointed["fast"],
        "full_step_s": wall["full_step"], "fast_step_s": wall["fast_step"],
        "step_speedup": wall["full_step"] / wall["fast_step"],
        "full_text_s": wall["full_text"], "fast_text_s": wall["fast_text"],
        "text_speedup": wall["full_text"] / wall["fast_text"],
        "full_step_cpu_s": cpu["full_step"], "fast_step_cpu_s": cpu["fast_step"],
        "step_speedup_cpu": cpu["full_step"] / cpu["fast_step"],
        "full_text_cpu_s": cpu["full_text"], "fast_text_cpu_s": cpu["fast_text"],
        "text_speedup_cpu": cpu["full_text"] / cpu["fast_text"],
        "max_rel_diff_logits": rel_diff(logits_fast, logits_full),
        "max_rel_diff_grad": max(diff_grad.values()), "rel_diff_grad": diff_grad,
        "samples_s": samples,
    }
    equal = max(row["max_rel_diff_logits"], row["max_rel_diff_grad"]) <= TARGETS["max_rel_diff"]
    for suffix in ("", "_cpu"):
        fast_enough = [row[key + suffix] >= TARGETS[key][host] for key in ("text_speedup", "step_speedup")
                       if host in TARGETS[key]]
        row["meets_targets" + suffix] = equal and all(fast_enough)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    ap.add_argument("--classes", type=int, default=1000, help="the first N ImageNet class names")
    ap.add_argument("--batch-size", type=int, default=32, help="images per step (CoOp, PLPP, MaPLe)")
    ap.add_argument("--cocoop-batch-size", type=int, default=1, help="images per CoCoOp step (its configs use 1)")
    ap.add_argument("--n-ctx", type=int, default=16, help="CoOp/PLPP context tokens")
    ap.add_argument("--hosts", default=",".join(HOSTS), help=f"comma-separated subset of {','.join(HOSTS)}")
    ap.add_argument("--repeats", type=int, default=None, help="alternation rounds (default: 3 tiny, 1 otherwise)")
    ap.add_argument("--text-checkpoint", choices=("auto", "always", "never"), default="auto",
                    help="TEXT_CHECKPOINT for both paths (auto: each decides on the tokens it computes)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    hosts = [h for h in args.hosts.split(",") if h]
    unknown = sorted(set(hosts) - set(HOSTS))
    if unknown:
        ap.error(f"--hosts: unknown {', '.join(unknown)}; choose from {', '.join(HOSTS)}")
    args.repeats = args.repeats or (3 if args.arch == "tiny" else 1)
    device = torch.device(args.device)
    classnames = imagenet_classnames(args.classes)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = [measure(host, args, classnames, device) for host in hosts]
    out = {
        "arch": args.arch, "device": device_name(device), "torch": torch.__version__, "precision": "fp32",
        "classnames": "ImageNet (torchvision ResNet50_Weights.IMAGENET1K_V1 metadata)",
        "text_checkpoint": args.text_checkpoint, "repeats": args.repeats,
        "load_avg_1min": [load_before, os.getloadavg()[0] if load_before is not None else None],
        "timing": "medians of alternated rounds after one forward+backward of each path; step = forward, "
                  "backward, SGD step; text = the class features' forward and backward; *_s wall clock, "
                  "*_cpu_s CPU time of this process (all threads)",
        "targets": TARGETS, "rows": rows,
    }
    print_report(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
