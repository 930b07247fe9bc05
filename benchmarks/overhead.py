"""Cost of the PLPP term on top of a host's training step (CoOp by default), measured in one process.

CoOp and PLPP steps run on the same model, batch and classes, alternating after warm-up. Also
reported for contrast: the naive per-class PLPP term (every class's context states through a
full-vocabulary softmax, ``[C, M, V]`` materialized) at ``--naive-classes``.

    python benchmarks/overhead.py --json                      # tiny widths, 1000 classes
    python benchmarks/overhead.py --arch vit_b16 --json       # exact ViT-B/16 widths (slow on CPU)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import (  # noqa: E402
    ARCHS,
    alternate_timing,
    device_name,
    imagenet_classnames,
    peak_mb,
    print_report,
    random_clip,
)
from plpp.engine import get_cfg_default  # noqa: E402
from plpp.perplexity import perplexity_losses  # noqa: E402
from plpp.trainers import extend_cfg  # noqa: E402
from plpp.trainers.coop import CustomCLIP  # noqa: E402


def naive_perplexity(ctx: torch.Tensor, states: torch.Tensor, embedding: torch.Tensor, topk: int, tau: float):
    """The per-class reference: full ``[C, M, V]`` similarities and log-probabilities at once."""
    sims = F.normalize(ctx.float(), dim=-1) @ F.normalize(embedding.float(), dim=-1).t()
    logp = torch.log_softmax(states.float() @ embedding.float().t(), dim=-1)
    top, idx = sims.topk(topk, dim=-1)
    q = torch.softmax(top / tau, dim=-1)
    logp_k = logp.gather(-1, idx)
    ppl = -(q.detach() * logp_k).sum(-1).mean()
    ippl = -(torch.softmax(logp_k, -1).detach() * torch.log_softmax(top / tau, -1)).sum(-1).mean()
    return ppl + ippl


def build(arch: str, n_classes: int, device: torch.device, n_ctx: int):
    """CoOp's model on random CLIP weights with the first ``n_classes`` ImageNet names, and its SGD."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.COOP.N_CTX = n_ctx
    model = CustomCLIP(cfg, imagenet_classnames(n_classes), random_clip(arch)).to(device)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("prompt_learner."))
    opt = torch.optim.SGD(model.prompt_learner.parameters(), lr=1e-3, momentum=0.9)
    return cfg, model, opt


def make_steps(cfg, model, opt, image, label):
    p = cfg.TRAINER.PLPP
    emb = model.token_embedding.weight

    def finish(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def coop():
        finish(F.cross_entropy(model(image).float(), label))

    def plpp():
        logits, ctx, states = model.forward_with_states(image)
        t = perplexity_losses(ctx, states, emb, topk=p.TOPK, temperature=p.TEMPERATURE)
        finish(F.cross_entropy(logits.float(), label) + p.PPL_WEIGHT * t["ppl"] + p.IPPL_WEIGHT * t["ippl"])

    def naive():
        learner = model.prompt_learner
        text, states = model.encode_text(learner.context_positions())
        ctx = learner.ctx.unsqueeze(0).expand(learner.n_cls, -1, -1)
        per_class = states.unsqueeze(0).expand(learner.n_cls, -1, -1)  # each class's (identical) context states
        logits = model.logits(model.encode_image(image), text)
        finish(F.cross_entropy(logits.float(), label) + p.PPL_WEIGHT * naive_perplexity(
            ctx, per_class, emb, p.TOPK, p.TEMPERATURE))

    return coop, plpp, naive


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--naive-classes", type=int, default=100, help="classes for the naive per-class contrast")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    res = ARCHS[args.arch]["image_resolution"]

    cfg, model, opt = build(args.arch, args.classes, device, args.n_ctx)
    torch.manual_seed(0)
    image = torch.randn(args.batch, 3, res, res, device=device)
    label = torch.randint(0, args.classes, (args.batch,), device=device)
    coop, plpp, _ = make_steps(cfg, model, opt, image, label)
    times = alternate_timing({"coop": coop, "plpp": plpp}, args.repeats, device)
    mem = {"coop": peak_mb(coop, device), "plpp": peak_mb(plpp, device)}

    cfg_n, model_n, opt_n = build(args.arch, args.naive_classes, device, args.n_ctx)
    label_n = label % args.naive_classes
    coop_n, plpp_n, naive_n = make_steps(cfg_n, model_n, opt_n, image, label_n)
    times_n = alternate_timing({"coop": coop_n, "plpp": plpp_n, "naive": naive_n}, max(args.repeats // 2, 1), device)
    mem_n = {k: peak_mb(fn, device) for k, fn in (("coop", coop_n), ("plpp", plpp_n), ("naive", naive_n))}

    out = {
        "arch": args.arch, "device": device_name(device), "torch": torch.__version__,
        "n_classes": args.classes, "batch_size": args.batch, "n_ctx": args.n_ctx,
        "coop_step_s": times["coop"], "plpp_step_s": times["plpp"],
        "step_time_ratio": times["plpp"] / times["coop"],
        "coop_peak_mb": mem["coop"], "plpp_peak_mb": mem["plpp"], "peak_mem_ratio": mem["plpp"] / mem["coop"],
        "naive_n_classes": args.naive_classes,
        "naive_coop_step_s": times_n["coop"], "naive_plpp_step_s": times_n["plpp"], "naive_step_s": times_n["naive"],
        "naive_step_time_ratio": times_n["naive"] / times_n["coop"],
        "naive_coop_peak_mb": mem_n["coop"], "naive_peak_mb": mem_n["naive"],
        "naive_peak_mem_ratio": mem_n["naive"] / mem_n["coop"],
        "targets": {"step_time_ratio": 1.03, "peak_mem_ratio": 1.03},
    }
    print_report(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
