"""The proxy world's Markdown tables from run outputs: ``python -m plpp.tools.proxy_report ROOT [--world DIR]``.

Reads what ``scripts/plpp/proxy.sh`` wrote under ``ROOT`` (base-to-new and few-shot runs through
``plpp.results``, the sweep's ``sweep/sweep_<dataset>_<trainer>.json``) and the world's manifest, and prints the tables
of docs/PROXY.md: base-to-new per method, few-shot per method, and the sweep of PLPP's open choices
beside the defaults. ``-o FILE`` also writes them to a file; ``--update DOC`` replaces the part of
``DOC`` between the ``<!-- proxy-report:begin -->`` and ``<!-- proxy-report:end -->`` lines, so the
docs are regenerated from the outputs, never typed by hand. Exit status 0, 2 when ``ROOT`` holds no
proxy runs or ``DOC`` has no markers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os.path as osp
import sys
from collections.abc import Sequence
from pathlib import Path

from plpp.provenance import KIND_LABELS, KIND_PROXY

#: The proxy-world datasets, in table order (folder names under the output root).
DATASETS = ("proxy_world_drawing", "proxy_world")
NAMES = {"proxy_world": "ProxyWorld (photos)", "proxy_world_drawing": "ProxyWorldDrawing (drawings)"}
LABEL = KIND_LABELS[KIND_PROXY]
BEGIN, END = "<!-- proxy-report:begin -->", "<!-- proxy-report:end -->"
#: Row order of the tables: zero-shot, then each host followed by its PLPP version; other trainers after.
ORDER = ("ZeroshotCLIP", "CoOp", "PLPP", "CoCoOp", "PLPP_CoCoOp", "MaPLe", "PLPP_MaPLe", "IVLP", "PLPP_IVLP",
         "PromptSRC", "PLPP_PromptSRC", "KgCoOp", "PLPP_KgCoOp", "ProGrad", "PLPP_ProGrad", "LinearProbeCLIP")


class ReportError(Exception):
    """Nothing to report, or a document without the markers."""


def _order(trainer: str) -> tuple[int, str]:
    return (ORDER.index(trainer), "") if trainer in ORDER else (len(ORDER), trainer)


def cell(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "–"
    spread = "" if std is None else f" ± {std:.1f}"  # one seed has no spread
    return f"{mean:.1f}{spread}" + ("" if n >= 3 else f" (n={n})")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def world_lines(world: str | None) -> list[str]:
    if not world:
        return []
    path = osp.join(world, "proxy-world.json")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        zs, spec = m["zero_shot"], m["spec"]
    except (OSError, ValueError, KeyError):
        return [f"World: no readable manifest at {path}."]
    kind = "quick" if spec["quick"] else "full"
    return [f"World: {kind} build, seed {spec['pretrain']['seed']}, {spec['pretrain']['steps']} pretraining steps of "
            f"{spec['pretrain']['batch_size']} pairs; its zero-shot accuracy ('a photo of a {{}}.', test split): "
            f"photos {zs['photo']['all']:.1f}% over 48 classes (base {zs['photo']['base']:.1f}, new "
            f"{zs['photo']['new']:.1f}), drawings {zs['drawing']['all']:.1f}% (base {zs['drawing']['base']:.1f}, new "
            f"{zs['drawing']['new']:.1f}); chance 2.1% over 48 classes, 4.2% over 24.", ""]


def _per_dataset(root: Path, seeds: list[int] | None, find, summarize, layout_error: type[Exception]):
    """``(dataset, summaries in table order)`` for each proxy dataset with runs under ``root`` (none when the
    tree has no runs of that protocol)."""
    try:
        found = find(root)
    except layout_error:
        return
    for dataset in DATASETS:
        runs = [r for r in found if r.dataset == dataset]
        if runs:
            yield dataset, sorted(summarize(root, runs, seeds), key=lambda s: _order(s.method.trainer))


def base2new_lines(root: Path, seeds: list[int] | None) -> list[str]:
    from plpp.results.aggregate import summarize_base2new
    from plpp.results.layout import LayoutError, find_base2new_runs

    lines = []
    for dataset, summaries in _per_dataset(root, seeds, find_base2new_runs, summarize_base2new, LayoutError):
        rows = []
        for s in summaries:
            base, new, hm = s.base(dataset), s.new(dataset), s.hm(dataset)
            rows.append([s.method.trainer, s.method.cfg, cell(base.mean, base.std, base.n),
                         cell(new.mean, new.std, new.n), "–" if hm is None else f"{hm:.1f}"])
        used = sorted({seed for s in summaries for seed in s.seeds})
        lines += [f"**Base-to-new on {NAMES[dataset]}** (16 shots of the 24 base classes; test accuracy %, "
                  f"mean ± std over seeds {' '.join(map(str, used))}; HM of the means):", "",
                  *_table(["method", "config", "base", "new", "HM"], rows), ""]
    return lines


def fewshot_lines(root: Path, seeds: list[int] | None) -> list[str]:
    from plpp.results.aggregate import summarize_fewshot
    from plpp.results.layout import LayoutError, find_fewshot_runs

    lines = []
    for dataset, summaries in _per_dataset(root, seeds, find_fewshot_runs, summarize_fewshot, LayoutError):
        shots = sorted({k for s in summaries for k in s.shots})
        rows = []
        for s in summaries:
            stats = [s.stat(dataset, k) for k in shots]
            rows.append([s.method.trainer, s.method.cfg, *(cell(st.mean, st.std, st.n) for st in stats)])
        lines += [f"**Few-shot on {NAMES[dataset]}** (all 48 classes; test accuracy %, mean ± std over seeds):", "",
                  *_table(["method", "config", *(f"{k} shot{'s' if k > 1 else ''}" for k in shots)], rows), ""]
    return lines


def sweep_lines(root: Path) -> list[str]:
    lines = []
    sweeps = []
    for path in sorted((root / "sweep").glob("sweep_*.json")):
        with open(path, encoding="utf-8") as f:
            sweeps.append(json.load(f))
    for dataset in DATASETS:  # a file names its dataset and trainer inside (proxy_world_drawing starts as proxy_world)
        for sweep in sorted((s for s in sweeps if s.get("dataset") == dataset), key=lambda s: _order(s["trainer"])):
            lines += _sweep_table(sweep)
    return lines


def _sweep_table(sweep: dict) -> list[str]:
    selected = {sel["variant"] for sel in sweep["selection"].values()}
    rows = []
    for v in sweep["variants"]:
        name = "defaults" if not v["key"] else f"`{v['key']} {v['value']}`"
        if v["name"] in selected and v["key"]:
            name += " (selected)"
        rows.append([name, *(cell(v[p]["mean"], v[p]["std"], v[p]["n"]) for p in ("val", "base", "new")),
                     "–" if v["hm"] is None else f"{v['hm']:.1f}"])
    defaults = ", ".join(f"{k} {d}" for k, d in sweep["defaults"].items())
    verdicts = []
    for key, sel in sweep["selection"].items():
        if sel["value"] == sweep["defaults"][key]:
            verdicts.append(f"{key}: the default has the best val accuracy")
        else:
            how = ("clearly (more than 2 standard errors)" if sel["clear"]
                   else "but not clearly (within 2 standard errors)")
            verdicts.append(f"{key}: {sel['value']} beats the default on val {how}")
    return [f"**PLPP's open choices on {NAMES[sweep['dataset']]}** ({sweep['trainer']} on base-to-new, seeds "
            f"{' '.join(map(str, sweep['seeds']))}; "
            f"one key changed at a time from the defaults {defaults}; selected on the {sweep['selected_on']}):", "",
            *_table(["setting", "val (base)", "base", "new", "HM"], rows), "",
            "Selection on val: " + "; ".join(verdicts) + ".", ""]


def report(root: Path, world: str | None = None, seeds: list[int] | None = None) -> str:
    """The Markdown of every table that ``root`` has runs for; :class:`ReportError` when it has none."""
    logging.getLogger("plpp.results").setLevel(logging.ERROR)  # missing benchmark datasets are expected here
    body = base2new_lines(root, seeds) + fewshot_lines(root, seeds) + sweep_lines(root)
    if not body:
        raise ReportError(f"no proxy-world runs under {root}: run scripts/plpp/proxy.sh (OUTPUT={root}) first")
    head = [f"*{LABEL[0].upper()}{LABEL[1:]}.* Generated by `python -m plpp.tools.proxy_report` from the runs of "
            "`scripts/plpp/proxy.sh`.", ""]
    return "\n".join(head + world_lines(world) + body).rstrip() + "\n"


def update_doc(doc: str, text: str) -> None:
    """Replace the lines between the report markers of ``doc`` with ``text``."""
    with open(doc, encoding="utf-8") as f:
        content = f.read()
    if BEGIN not in content or END not in content or content.index(BEGIN) > content.index(END):
        raise ReportError(f"{doc} has no '{BEGIN}' ... '{END}' block to update")
    before, rest = content.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    with open(doc, "w", encoding="utf-8") as f:
        f.write(f"{before}{BEGIN}\n{text}{END}{after}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plpp.tools.proxy_report", description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, metavar="ROOT", help="output root of scripts/plpp/proxy.sh")
    parser.add_argument("--world", metavar="DIR", help="the proxy world folder (for its zero-shot line)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S", help="expected seeds (default 1 2 3)")
    parser.add_argument("-o", "--output", metavar="FILE", help="also write the Markdown to FILE")
    parser.add_argument("--update", metavar="DOC", help="replace the report block of DOC (e.g. docs/PROXY.md)")
    args = parser.parse_args(argv)
    try:
        text = report(args.root, args.world, args.seeds)
        if args.update:
            update_doc(args.update, text)
    except (ReportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
