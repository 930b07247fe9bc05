"""Peak memory of one CoOp and one PLPP training step at many classes: the fast text pass, and the full one.

Each configuration runs in its own subprocess (this script with ``--one``), because a process's peak
resident memory only grows: the child reports ``ru_maxrss`` after building the model and after one
step (forward, backward, optimizer step) and the parent prints the table. At ``--classes``:

* the fast text pass (``TEXT_PASS fast``) with ``TEXT_CHECKPOINT auto``, which decides on the tokens it
  computes (at 1000 ImageNet-sized classes: off) — the figure that must fit the target;
* the full 77-token pass with ``auto`` (on there), for comparison;
* the full pass unchecked, measured at ``--plain-classes`` only and extrapolated to ``--classes`` with a
  line through those points, since at 1000 ViT-B/16 classes it needs more memory than this machine has.

The class names are ImageNet's (torchvision's weights metadata). The children run with
``MALLOC_MMAP_THRESHOLD_=1048576`` so that RSS follows the memory the step holds (see ``child_env``).

    python benchmarks/memory.py --json                        # tiny widths: runs in seconds
    python benchmarks/memory.py --arch vit_b16 --json         # exact ViT-B/16, fp32 (≈40 min on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import ARCHS, device_name, print_report  # noqa: E402
from benchmarks.overhead import build, make_steps  # noqa: E402
from plpp.trainers.base import decide_text_checkpoint  # noqa: E402

HOSTS = ("coop", "plpp")
TARGET_MB = 12 * 1024  # a 16 GB card with headroom for the allocator, CUDA context and data
MALLOC_ENV = "MALLOC_MMAP_THRESHOLD_"


def rss_peak_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def measure_one(arch: str, host: str, n_classes: int, checkpoint: str, text_pass: str, batch: int,
                n_ctx: int) -> dict:
    """One training step of ``host`` in this process; peak RSS before and after it (MiB)."""
    device = torch.device("cpu")
    cfg, model, opt = build(arch, n_classes, device, n_ctx)
    encoder, work = model.text_encoder, model.text_work(batch)
    encoder.mode = text_pass
    on, reason = decide_text_checkpoint(checkpoint, encoder.tokens_per_pass(work.layout, work.groups))
    encoder.use_checkpoint = on
    res = ARCHS[arch]["image_resolution"]
    torch.manual_seed(0)
    image = torch.randn(batch, 3, res, res, device=device)
    label = torch.randint(0, n_classes, (batch,), device=device)
    steps = dict(zip(("coop", "plpp"), make_steps(cfg, model, opt, image, label)[:2]))
    before = rss_peak_mb()
    start = time.perf_counter()
    steps[host]()
    return {"host": host, "n_classes": n_classes, "text_pass": text_pass, "checkpointed": on, "rule": reason,
            "rss_before_step_mb": before, "peak_mb": rss_peak_mb(), "step_s": time.perf_counter() - start}


def child_env() -> dict[str, str]:
    """The children's environment: glibc hands freed tensors (≥ 1 MiB) back to the OS at once.

    By default glibc raises its mmap threshold up to 32 MiB and keeps freed blocks below it in the
    heap, so a process's RSS would depend on tensor sizes (high at 100 classes, not at 250) instead
    of the memory the step needs. Set ``MALLOC_MMAP_THRESHOLD_`` yourself to override.
    """
    env = dict(os.environ)
    env.setdefault(MALLOC_ENV, str(2**20))
    return env


def run_child(args: argparse.Namespace, host: str, n_classes: int, checkpoint: str, text_pass: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", f"{host}:{n_classes}:{checkpoint}:{text_pass}",
           "--arch", args.arch, "--batch-size", str(args.batch_size), "--n-ctx", str(args.n_ctx)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(cmd[2:])} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def line_through(points: dict[int, float], x: int) -> tuple[float, float]:
    """Least-squares line through ``{classes: MiB}``: its value at ``x`` and its slope (MiB per class)."""
    xs, ys = list(points), list(points.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    return my + slope * (x - mx), slope


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    ap.add_argument("--classes", type=int, default=1000, help="classes (the first N ImageNet names)")
    ap.add_argument("--plain-classes", default="100,250",
                    help="comma-separated class counts of the unchecked steps (extrapolated to --classes)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--hosts", default=",".join(HOSTS), help=f"comma-separated subset of {','.join(HOSTS)}")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the full 77-token pass (checkpointed, and unchecked at --plain-classes)")
    ap.add_argument("--one", metavar="HOST:CLASSES:auto|always|never:fast|full", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        host, n_classes, checkpoint, text_pass = args.one.split(":")
        print(json.dumps(measure_one(args.arch, host, int(n_classes), checkpoint, text_pass, args.batch_size,
                                     args.n_ctx)))
        return 0

    hosts = [h for h in args.hosts.split(",") if h]
    unknown = sorted(set(hosts) - set(HOSTS))
    if unknown:
        ap.error(f"--hosts: unknown {', '.join(unknown)}; choose from {', '.join(HOSTS)}")
    plain_classes = [int(c) for c in args.plain_classes.split(",") if c]
    if len(plain_classes) < 2:
        ap.error("--plain-classes needs at least two class counts to fit a line")
    start = time.perf_counter()
    out: dict = {"arch": args.arch, "device": device_name(torch.device("cpu")), "torch": torch.__version__,
                 "precision": "fp32", "n_classes": args.classes, "batch_size": args.batch_size, "n_ctx": args.n_ctx,
                 "measure": "peak resident memory (ru_maxrss) of a fresh process after one training step",
                 "malloc": f"{MALLOC_ENV}={child_env()[MALLOC_ENV]}", "target_mb": TARGET_MB}
    for host in hosts:
        fast = run_child(args, host, args.classes, "auto", "fast")
        row = {
            "peak_mb_fast": fast["peak_mb"], "fast_checkpointed": fast["checkpointed"], "fast_rule": fast["rule"],
            "rss_before_step_mb": fast["rss_before_step_mb"], "step_s_fast": fast["step_s"],
            "meets_target": not fast["checkpointed"] and fast["peak_mb"] <= TARGET_MB,
        }
        if args.full:
            ckpt = run_child(args, host, args.classes, "auto", "full")
            plain = {c: run_child(args, host, c, "never", "full") for c in plain_classes}
            extrapolated, slope = line_through({c: r["peak_mb"] for c, r in plain.items()}, args.classes)
            row.update({
                "peak_mb_full_checkpointed": ckpt["peak_mb"], "full_checkpointed": ckpt["checkpointed"],
                "full_rule": ckpt["rule"], "step_s_full_checkpointed": ckpt["step_s"],
                "peak_mb_full_unchecked": {str(c): r["peak_mb"] for c, r in plain.items()},
                "step_s_full_unchecked": {str(c): r["step_s"] for c, r in plain.items()},
                "full_unchecked_mb_per_class": slope,
                "peak_mb_full_unchecked_extrapolated": extrapolated,
            })
        out[host] = row
    out["meets_target"] = all(out[h]["meets_target"] for h in hosts)
    out["wall_s"] = time.perf_counter() - start
    print_report(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
