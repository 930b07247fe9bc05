"""The commands in the docs stay true: ``bash`` blocks are run, ``console`` blocks are checked.

Convention for every Markdown file of the project:
- a fenced block marked ``bash`` runs as it is, from the repository root of a fresh clone, without real
  CLIP weights or datasets (here ``DATA`` holds a tiny Fashion-MNIST and ``PLPP_CLIP_CACHE`` is empty);
  the paths it names under ``/tmp/`` (and ``TMPDIR``) are redirected into the test's own temporary
  folder, so two runs never share a file and every run starts from nothing;
- a fenced block marked ``console`` needs real data, weights, GPUs or other software; each of its commands
  is checked without running it: ``train.py`` (also behind ``torchrun``) must parse into a valid config,
  ``scripts/plpp/*.sh`` must pass ``--dry-run``, ``plpp-results`` must parse, modules must exist.
Other blocks (``text``, ``sh`` for script files, ``python``, ...) are not executed.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env, write_fashion_mnist

DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "benchmarks").glob("*.md"),
               *(REPO / "configs").rglob("*.md")])
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SKIP_PREFIXES = ("pip ", "git ", "python -m pytest", "sudo ", "apt-get ", "sbatch ", "mkdir ", "cd ", "export ",
                 "source ", "for ", "do", "done", "cat ", "rm ", "ls ", "conda ", "#")


def blocks(kind: str) -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        for i, m in enumerate(FENCE.finditer(text)):
            if m.group(1) == kind:
                out.append((f"{path.relative_to(REPO)}#{i}", m.group(2)))
    return out


def commands(block: str) -> list[str]:
    """Commands of a console block: continuation lines joined, ``$ `` prompts and output lines handled."""
    lines = block.splitlines()
    prompted = any(ln.startswith("$ ") for ln in lines)
    out, current = [], ""
    for ln in lines:
        if prompted and not current:
            if not ln.startswith("$ "):
                continue  # program output shown in the block
            ln = ln[2:]
        current += ln.rstrip("\\").rstrip() + " " if ln.rstrip().endswith("\\") else ln
        if not ln.rstrip().endswith("\\"):
            out.append(current.strip())
            current = ""
    return [c for c in out if c]


@pytest.fixture(scope="module")
def doc_env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("docs")
    data = root / "data"
    write_fashion_mnist(data, n_classes=10, train_per_class=20, test_per_class=10)
    (root / "clip_cache").mkdir()
    env = subprocess_env()
    env.update(DATA=str(data), OUTPUT=str(root / "output"), PLPP_CLIP_CACHE=str(root / "clip_cache"))
    return env


RUNNABLE = blocks("bash")
CHECKED = blocks("console")


def test_docs_have_checked_commands():
    assert len(RUNNABLE) >= 2 and len(CHECKED) >= 5


FIXED_TMP = re.compile(r"/tmp/[\w.-]+")


def redirect_tmp(block: str, tmp: Path) -> str:
    """``block`` with every ``/tmp/`` path moved under ``tmp`` (a folder of this test alone)."""
    return block.replace("/tmp/", f"{tmp}/")


@pytest.mark.parametrize("name,block", RUNNABLE, ids=[n for n, _ in RUNNABLE])
def test_runnable_block(name, block, doc_env, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    fixed = {Path(p) for p in FIXED_TMP.findall(block)}
    before = {p: p.stat().st_mtime_ns if p.exists() else None for p in fixed}
    env = dict(doc_env, TMPDIR=str(tmp), OUTPUT=str(tmp_path / "output"))
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", redirect_tmp(block, tmp)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{name} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert "skip: " not in res.stdout, f"{name} skipped work it should have done:\n{res.stdout[-2000:]}"
    after = {p: p.stat().st_mtime_ns if p.exists() else None for p in fixed}
    assert after == before, f"{name} wrote outside its temporary folder: {sorted(map(str, fixed))}"


def test_tmp_paths_of_doc_blocks_are_redirected():
    blocks_with_tmp = [(n, b) for n, b in RUNNABLE if "/tmp/" in b]
    assert blocks_with_tmp  # the README's offline check and INTEGRATION.md's host example name /tmp paths
    for name, block in blocks_with_tmp:
        assert "/tmp/" not in redirect_tmp(block, Path("/elsewhere/test-tmp")), name


def _split_env(words: list[str]) -> tuple[dict, list[str]]:
    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def check_command(cmd: str, doc_env: dict, tmp_path: Path) -> bool:
    """Check one console command without running its real work; False when it is not a checkable kind."""
    cmd = cmd.split(" # ")[0].split(" > ")[0].strip()
    if not cmd or cmd.startswith(SKIP_PREFIXES):
        return False
    parts = [p.strip() for p in cmd.split("&&")]
    if len(parts) > 1:
        return any([check_command(p, doc_env, tmp_path) for p in parts])
    words = shlex.split(cmd)
    env, words = _split_env(words)
    if any("$" in w and not w.startswith(("$DATA", "$OUTPUT")) for w in words) or "..." in words:
        return False  # a shell variable of a surrounding loop, or arguments elided with "..."
    words = [w.replace("$DATA", "/data").replace("$OUTPUT", "output").replace("/path/to/plpp/", "")
             for w in words]  # "/path/to/plpp": this checkout, named from another one
    if words[:1] == ["torchrun"]:
        words = ["python", *words[words.index("train.py"):]] if "train.py" in words else []
    if words[:2] == ["python", "train.py"]:
        from plpp.engine.cli import get_parser, setup_cfg

        args = get_parser().parse_args(words[2:])
        setup_cfg(args)  # config files exist, keys are valid
        return True
    if words[:1] == ["bash"] and words[1].startswith("scripts/plpp/"):
        run_env = dict(doc_env, **{k: v for k, v in env.items() if k not in ("DATA", "OUTPUT")})
        run_env["DRY_RUN"] = "1"
        res = subprocess.run(["bash", *words[1:]], cwd=REPO, env=run_env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, f"{cmd!r} --dry-run failed:\n{res.stderr[-2000:]}"
        return True
    if words[:1] == ["plpp-results"] or words[:3] == ["python", "-m", "plpp.results"]:
        from plpp.results.cli import build_parser

        build_parser().parse_args(words[1:] if words[0] == "plpp-results" else words[3:])
        return True
    if words[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(words[2]) is not None, f"{cmd!r}: no module {words[2]}"
        return True
    if words[:1] == ["python"] and words[1].endswith(".py"):
        assert (REPO / words[1]).exists() or words[1].startswith("/"), f"{cmd!r}: no file {words[1]}"
        return True
    return False


@pytest.mark.parametrize("name,block", CHECKED, ids=[n for n, _ in CHECKED])
def test_console_block(name, block, doc_env, tmp_path):
    checked = [check_command(c, doc_env, tmp_path) for c in commands(block)]
    assert checked, f"{name}: empty block"


def test_checker_catches_stale_commands(doc_env, tmp_path):
    with pytest.raises(FileNotFoundError):
        check_command("python train.py --config-file configs/trainers/PLPP/vit_b99.yaml", doc_env, tmp_path)
    with pytest.raises(ValueError, match="TRAINER.PLPP.TOPK"):
        check_command("python train.py --trainer PLPP TRAINER.PLPP.TOP_K 5", doc_env, tmp_path)
    with pytest.raises(AssertionError):
        check_command("DATA=/data bash scripts/plpp/main.sh imagenet", doc_env, tmp_path)  # SHOTS missing
    with pytest.raises(SystemExit):
        check_command("plpp-results base3new output", doc_env, tmp_path)
