"""PLPP inside another codebase's checkout, with the one import line of docs/INTEGRATION.md §2.

CI part (runs everywhere): a fabricated checkout whose own ``clip/`` package shadows the stock one and
raises if PLPP ever uses it, as MaPLe's and PromptSRC's modified copies would break or silently change
our model. Its own trainer keeps its ``clip``; ours always run on the installed distribution's.

Manual part (skips without them): real CoOp, MaPLe, PromptSRC and KgCoOp checkouts on real Dassl,
named by ``PLPP_COOP_DIR``, ``PLPP_MAPLE_DIR``, ``PLPP_PROMPTSRC_DIR`` and ``PLPP_KGCOOP_DIR`` (for
KgCoOp, the folder that holds its ``train.py``, or the repository root above it). Run them with an
interpreter that has Dassl, as docs/INTEGRATION.md §4 describes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from plpp.clip_utils import stock_clip_dir
from tests.conftest import PYTHON, REPO, TINY_OPTS, subprocess_env

INTEGRATION_LINE = "import plpp.trainers, plpp.datasets  # noqa: E401,F401  (PLPP: trainers, datasets, config keys)"

# --------------------------------------------------------------------------- a fabricated checkout (CI)

SHADOW_CLIP = {
    "clip/__init__.py": '''
        """A checkout's own modified CLIP (as MaPLe ships one): PLPP must never use it."""
        CHECKOUT_CLIP = True
        from . import clip  # noqa: F401  (what ``from clip import clip`` in a checkout's trainer reads)


        def __getattr__(name):
            raise RuntimeError(f"PLPP used the checkout's clip.{name}")
        ''',
    "clip/clip.py": '''
        _MODELS = {}


        def build_model(state_dict, design_details):
            raise RuntimeError("PLPP used the checkout's build_model")


        def tokenize(*args, **kwargs):
            raise RuntimeError("PLPP used the checkout's tokenize")


        def __getattr__(name):
            raise RuntimeError(f"PLPP used the checkout's clip.clip.{name}")
        ''',
    "clip/model.py": '''
        raise RuntimeError("PLPP imported the checkout's clip.model")
        ''',
    "clip/simple_tokenizer.py": '''
        raise RuntimeError("PLPP imported the checkout's clip.simple_tokenizer")
        ''',
    "trainers/__init__.py": "",
    "trainers/theirs.py": '''
        """The checkout's own trainer: it imports the checkout's clip at import time, as MaPLe's do."""
        from clip import clip

        from plpp.engine import TRAINER_REGISTRY, TrainerX


        @TRAINER_REGISTRY.register()
        class TheirTrainer(TrainerX):
            CLIP = clip
        ''',
    "train.py": f'''
        """The checkout's train.py: its own imports first, then the one PLPP line, then its main."""
        import json
        import sys

        import clip  # noqa: F401  (the checkout's own, imported before PLPP)
        import trainers.theirs  # noqa: F401
        {INTEGRATION_LINE}
        from plpp.engine import TRAINER_REGISTRY
        from plpp.engine.cli import main

        if __name__ == "__main__":
            code = main()
            from plpp.clip_utils import import_clip

            print("FACTS " + json.dumps({{
                "clip": sys.modules["clip"].__file__,
                "theirs": TRAINER_REGISTRY.get("TheirTrainer").CLIP.__file__,
                "ours": import_clip().__file__,
            }}))
            sys.exit(code)
        ''',
}


@pytest.fixture(scope="module")
def shadowing_checkout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkout") / "their-checkout"
    for rel, text in SHADOW_CLIP.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


@pytest.mark.parametrize("trainer", ["PLPP", "PLPP_CoCoOp", "PLPP_MaPLe"])
def test_plpp_ignores_a_checkouts_own_clip(trainer, shadowing_checkout, small_data_root, tiny_clip_file, tmp_path):
    """With the checkout's ``clip`` imported first, our trainers train and test on the stock one."""
    out = tmp_path / "run"
    argv = ["--root", str(small_data_root), "--seed", "1", "--trainer", trainer,
            "--dataset-config-file", str(REPO / "configs/datasets/fashion_mnist.yaml"), "--output-dir", str(out),
            "MODEL.BACKBONE.NAME", str(tiny_clip_file), *TINY_OPTS, "OPTIM.MAX_EPOCH", "1",
            "DATASET.NUM_SHOTS", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "2", "TRAINER.COOP.N_CTX", "2",
            "TRAINER.COCOOP.N_CTX", "2", "TRAINER.MAPLE.PROMPT_DEPTH", "2"]
    res = subprocess.run([PYTHON, "train.py", *argv], cwd=shadowing_checkout, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "* accuracy:" in (out / "log.txt").read_text()
    facts = json.loads(res.stdout.split("FACTS ", 1)[1])
    assert facts["clip"] == str(shadowing_checkout / "clip" / "__init__.py")  # still the checkout's
    assert facts["theirs"] == str(shadowing_checkout / "clip" / "clip.py")
    assert facts["ours"] == str(Path(stock_clip_dir()) / "__init__.py")


def test_no_installed_clip_distribution_is_one_clear_error(monkeypatch):
    from plpp import clip_utils

    monkeypatch.setattr(clip_utils, "CLIP_DISTRIBUTIONS", ("no-such-clip-distribution",))
    with pytest.raises(clip_utils.ClipPackageError, match="Install it with: pip install clip-anytorch"):
        clip_utils.stock_clip_dir()


@pytest.mark.parametrize("value,ok", [("a photo of a", True), ("", True), (False, True), (True, False), (1, False)])
def test_ctx_init_must_be_words_or_false(value, ok):
    """A train.py may declare CTX_INIT as a flag (KgCoOp): False means a random context, True is refused."""
    from types import SimpleNamespace

    from plpp.engine import get_cfg_default
    from plpp.trainers import extend_cfg
    from plpp.trainers.base import ClipPromptTrainer

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.COOP.CTX_INIT = value
    host = SimpleNamespace(PREC_KEY="COOP")
    if ok:
        ClipPromptTrainer.check_cfg(host, cfg)
    else:
        with pytest.raises(ValueError, match="TRAINER.COOP.CTX_INIT must be the words"):
            ClipPromptTrainer.check_cfg(host, cfg)


def test_a_checkout_importing_clip_after_plpp_gets_its_own(shadowing_checkout, tiny_clip_file):
    """PLPP never registers itself as ``clip``: a later ``import clip`` in the checkout is the checkout's."""
    script = textwrap.dedent(f"""
        import sys
        from plpp.clip_utils import load_clip, tokenize
        model = load_clip({str(tiny_clip_file)!r})
        assert tokenize("a photo").shape == (1, 77) and "clip" not in sys.modules
        import clip
        from clip import clip as inner
        assert clip.CHECKOUT_CLIP and inner.__file__.startswith({str(shadowing_checkout)!r})
        print(type(model).__module__)
        """)
    res = subprocess.run([PYTHON, "-c", script], cwd=shadowing_checkout, env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "plpp._stock_clip.model"


# --------------------------------------------------------------------------- real checkouts on real Dassl (manual)

CHECKOUT_ENV = {"CoOp": "PLPP_COOP_DIR", "MaPLe": "PLPP_MAPLE_DIR", "PromptSRC": "PLPP_PROMPTSRC_DIR",
                "KgCoOp": "PLPP_KGCOOP_DIR"}
# Our trainer → (its config in this repository, options that fit it to the tiny CLIP).
PLPP_TRAINERS = {
    "PLPP": ("configs/trainers/PLPP/vit_b16_ep50.yaml", ["TRAINER.COOP.N_CTX", "4"]),
    "PLPP_CoCoOp": ("configs/trainers/PLPP_CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", ["TRAINER.COCOOP.N_CTX", "2"]),
    "PLPP_MaPLe": ("configs/trainers/PLPP_MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", ["TRAINER.MAPLE.PROMPT_DEPTH", "2"]),
}
PETS = ["abyssinian", "beagle", "boxer", "pug"]


def checkout_source(name: str) -> Path:
    """The checkout named by ``name``'s environment variable (the folder holding its ``train.py``), or skip."""
    from tests.test_dassl_backend import HAS_DASSL

    src = os.environ.get(CHECKOUT_ENV[name])
    if not HAS_DASSL or not src:
        pytest.skip(f"set {CHECKOUT_ENV[name]} to a {name} checkout and use an interpreter with Dassl")
    src = Path(src).expanduser()
    if (src / "KgCoOp" / "train.py").is_file():  # the KgCoOp repository holds its checkout in KgCoOp/
        src = src / "KgCoOp"
    if not (src / "train.py").is_file():
        pytest.fail(f"{CHECKOUT_ENV[name]}={src} has no train.py")
    return src


def add_integration_line(train_py: Path) -> None:
    """Insert the documented line after the last ``import trainers.…`` line of a checkout's ``train.py``."""
    lines = train_py.read_text().splitlines(keepends=True)
    last = max(i for i, ln in enumerate(lines) if ln.startswith("import trainers."))
    lines.insert(last + 1, INTEGRATION_LINE + "\n")
    train_py.write_text("".join(lines))


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """``checkout(name)``: a copy of that checkout, outside the repository, with the one line added."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            src = checkout_source(name)
            dst = tmp_path_factory.mktemp(name.lower()) / src.name
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "output", "*.pth*", "__pycache__"))
            add_integration_line(dst / "train.py")
            made[name] = dst
        return made[name]

    return get


def write_oxford_pets(root: Path, train: int = 8, val: int = 4, test: int = 4) -> Path:
    """A tiny dataset in CoOp's OxfordPets layout (``images/`` and ``split_zhou_OxfordPets.json``)."""
    import numpy as np
    from PIL import Image

    base = root / "oxford_pets"
    (base / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, breed in enumerate(PETS):
        for part, count in (("train", train), ("val", val), ("test", test)):
            for i in range(count):
                pixels = rng.integers(0, 40, size=(32, 32, 3)).astype(np.uint8)
                pixels[8 * label : 8 * label + 8] = 255  # a band per class: learnable
                name = f"{breed}_{part}_{i}.jpg"
                Image.fromarray(pixels).save(base / "images" / name)
                split[part].append([name, label, breed])
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(split, indent=4))
    return root


@pytest.fixture(scope="module")
def pets_root(tmp_path_factory) -> Path:
    return write_oxford_pets(tmp_path_factory.mktemp("pets"))


def checkout_args(pets_root, clip_file, out, trainer: str, config: str, epochs: int = 2, seed: int = 1,
                  flags=(), opts=()) -> list[str]:
    """A tiny run of a checkout's ``train.py`` on its own OxfordPets reader and config file."""
    return ["--root", str(pets_root), "--seed", str(seed), "--trainer", trainer, *flags,
            "--dataset-config-file", "configs/datasets/oxford_pets.yaml", "--config-file", config,
            "--output-dir", str(out), "MODEL.BACKBONE.NAME", str(clip_file), *TINY_OPTS,
            "OPTIM.MAX_EPOCH", str(epochs), "DATASET.NUM_SHOTS", "4", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", *opts]


def run_checkout(cwd: Path, argv: list[str], script: str = "train.py", timeout: int = 600):
    env = subprocess_env()
    env["PLPP_ENGINE"] = "dassl"
    return subprocess.run([PYTHON, script, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def final_accuracy(log: str) -> float:
    return float(re.findall(r"\* accuracy: ([\d.]+)%", log)[-1])


def registered_by_checkout(root: Path) -> set[str]:
    """Trainer names the checkout's ``train.py`` registers: ``@TRAINER_REGISTRY.register()`` classes it imports."""
    modules = re.findall(r"^import trainers\.(\w+)", (root / "train.py").read_text(), re.M)
    names = set()
    for module in modules:
        text = (root / "trainers" / f"{module}.py").read_text()
        names.update(re.findall(r"@TRAINER_REGISTRY\.register\(\)\s*\nclass (\w+)", text))
    return names


@pytest.mark.parametrize("name", list(CHECKOUT_ENV))
def test_checkout_keeps_its_own_trainers_datasets_and_clip(name, checkout, tiny_clip_file):
    root = checkout(name)
    script = textwrap.dedent(f"""
        import json, sys
        import train  # the checkout's imports and the PLPP line (its main() only runs as a script)
        import plpp.engine as e
        from dassl.data.datasets import DATASET_REGISTRY
        from dassl.engine import TRAINER_REGISTRY
        from plpp.clip_utils import import_clip, load_clip
        load_clip({str(tiny_clip_file)!r})
        print("FACTS " + json.dumps({{
            "trainers": {{n: TRAINER_REGISTRY.get(n).__module__ for n in TRAINER_REGISTRY.registered_names()}},
            "pets": DATASET_REGISTRY.get("OxfordPets").__module__,
            "skipped": sorted(e.TRAINER_REGISTRY.skipped),
            "clip": sys.modules["clip"].__file__,
            "ours": import_clip().__file__,
        }}))
        """)
    res = run_checkout(root, [script], script="-c")
    assert res.returncode == 0, res.stderr[-3000:]
    facts = json.loads(res.stdout.split("FACTS ", 1)[1])
    theirs = registered_by_checkout(root)
    assert theirs and all(facts["trainers"][n].startswith("trainers.") for n in theirs), facts["trainers"]
    for ours in PLPP_TRAINERS:
        assert facts["trainers"][ours] == "plpp.trainers.plpp"
    ours = {"CoOp", "CoCoOp", "MaPLe", "IVLP", "PromptSRC", "KgCoOp", "ProGrad", "ZeroshotCLIP", "ZeroshotCLIP2"}
    assert set(facts["skipped"]) == theirs & ours  # the names both register stay the checkout's
    assert facts["pets"] == "datasets.oxford_pets"
    assert facts["clip"] == str(root / "clip" / "__init__.py")
    assert facts["ours"] == str(Path(stock_clip_dir()) / "__init__.py")


@pytest.mark.parametrize("trainer", list(PLPP_TRAINERS))
@pytest.mark.parametrize("name", list(CHECKOUT_ENV))
def test_checkout_trains_plpp_then_eval_only_reproduces(name, trainer, checkout, pets_root, tiny_clip_file,
                                                        tmp_path):
    root = checkout(name)
    config, opts = PLPP_TRAINERS[trainer]
    if name == "KgCoOp" and trainer == "PLPP_CoCoOp":
        # KgCoOp declares TRAINER.COCOOP.CTX_INIT as a flag, so yacs refuses the text our CoCoOp config sets
        # there (its own CoCoOp configs too): a config without CTX_INIT, i.e. a random context.
        config = PLPP_TRAINERS["PLPP"][0]
    out = tmp_path / "train"
    res = run_checkout(root, checkout_args(pets_root, tiny_clip_file, out, trainer, str(REPO / config), opts=opts))
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'PLPP: trainer "CoOp" is already registered by trainers.coop; keeping it' in res.stdout
    log = (out / "log.txt").read_text()
    assert re.search(r"^epoch \[2/2\] ?(batch )?\[4/4\].*loss_ppl", log, re.M)  # Dassl 0.5 prints "[2/2][4/4]"
    for line in ("Prompt words (epoch 2):", "Finish training"):
        assert line in log, line
    state = torch.load(out / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    assert state["epoch"] == 2

    ev = tmp_path / "eval"
    res = run_checkout(root, checkout_args(pets_root, tiny_clip_file, ev, trainer, str(REPO / config), opts=opts,
                                           flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "2")))
    assert res.returncode == 0, res.stderr[-3000:]
    assert final_accuracy((ev / "log.txt").read_text()) == final_accuracy(log)
    assert json.loads((ev / "results.json").read_text())["eval_only"] is True


# Runs a checkout's train.py with its own clip package serving a local weights file under that file's
# path as the model name: the checkout's loader downloads by name, and tests have no network.
LOCAL_WEIGHTS_RUNNER = '''
"""python run_local_weights.py WEIGHTS train.py ARGS...: the checkout's train.py, its clip reading WEIGHTS."""
import runpy
import sys

weights = sys.argv.pop(1)
sys.argv.pop(0)
sys.path.insert(0, ".")
from clip import clip as checkout_clip  # noqa: E402  (the checkout's own package)

checkout_clip._MODELS[weights] = weights
checkout_clip._download = lambda url, *args, **kwargs: weights
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def dassl_warmup_works() -> bool:
    """False where Dassl's warm-up scheduler fails on this torch (Dassl 0.6.3 with torch ≥ 2.7, unpatched)."""
    from dassl.optim import build_lr_scheduler as dassl_scheduler

    from plpp.engine import get_cfg_default

    cfg = get_cfg_default()
    cfg.OPTIM.WARMUP_EPOCH = 1
    try:
        dassl_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), cfg.OPTIM)
    except TypeError:
        return False
    return True


def step_values(log: str) -> list[tuple[str, ...]]:
    """(epoch/batch, loss, acc, lr) of every training line: the fields CoOp's trainer and ours both print."""
    pattern = re.compile(r"epoch \[(\d+/\d+)\] batch \[(\d+/\d+)\] .*?\bloss (\S+ \(\S+\)) .*?\bacc (\S+ \(\S+\)) "
                         r"lr (\S+)")
    return [m.groups() for m in map(pattern.match, log.splitlines()) if m]


def test_coop_checkout_plpp_with_zero_weights_is_its_own_coop(checkout, pets_root, tiny_clip_file, tmp_path):
    """PLPP with both loss weights at 0 trains exactly what the checkout's own CoOp trainer trains."""
    root = checkout("CoOp")
    if not dassl_warmup_works():
        pytest.skip("this Dassl's warm-up scheduler fails on this torch, so the checkout's own CoOp cannot run; "
                    "patch a copy of Dassl as docs/INTEGRATION.md §1 says")
    runner = tmp_path / "run_local_weights.py"
    runner.write_text(LOCAL_WEIGHTS_RUNNER)
    common = ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32"]
    config = str(root / "configs/trainers/CoOp/vit_b16_ep50.yaml")
    theirs, ours = tmp_path / "coop", tmp_path / "plpp"
    res = run_checkout(root, [str(tiny_clip_file), "train.py",
                              *checkout_args(pets_root, tiny_clip_file, theirs, "CoOp", config, opts=common)],
                       script=str(runner))
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_checkout(root, [str(tiny_clip_file), "train.py",
                              *checkout_args(pets_root, tiny_clip_file, ours, "PLPP", config,
                                             opts=[*common, "TRAINER.PLPP.PPL_WEIGHT", "0.0",
                                                   "TRAINER.PLPP.IPPL_WEIGHT", "0.0"])],
                       script=str(runner))
    assert res.returncode == 0, res.stderr[-3000:]
    log_theirs, log_ours = (theirs / "log.txt").read_text(), (ours / "log.txt").read_text()
    assert "Loading trainer: CoOp" in log_theirs and "Loading trainer: PLPP" in log_ours
    assert len(step_values(log_theirs)) == 8 and step_values(log_theirs) == step_values(log_ours)
    assert final_accuracy(log_theirs) == final_accuracy(log_ours)
    # The checkout's checkpoint is Dassl's pickle (scheduler object inside); this test just wrote it.
    state_theirs = torch.load(theirs / "prompt_learner" / "model.pth.tar-2", weights_only=False)
    assert torch.equal(state_theirs["state_dict"]["ctx"],
                       torch.load(ours / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]["ctx"])


def test_kgcoop_checkout_ctx_init_flag_is_one_clear_error(checkout, pets_root, tiny_clip_file, tmp_path):
    """KgCoOp's ``CTX_INIT True`` means "its own template"; our trainers need words, and say so."""
    root = checkout("KgCoOp")
    config, opts = PLPP_TRAINERS["PLPP"]
    res = run_checkout(root, checkout_args(pets_root, tiny_clip_file, tmp_path / "out", "PLPP", str(REPO / config),
                                           opts=[*opts, "TRAINER.COOP.CTX_INIT", "True"]))
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith(
        "ValueError: TRAINER.COOP.CTX_INIT must be the words to initialise the context from")
