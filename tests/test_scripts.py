"""The protocol scripts in ``scripts/plpp/`` and the demo, end to end on a tiny CLIP and fabricated data.

Every script runs in a subprocess (``bash scripts/plpp/X.sh ...``) with ``DATA`` and ``OUTPUT`` in
``tmp_path`` and the tiny-run options passed through as trailing KEY VALUE pairs. The data root holds
tiny Fashion-MNIST IDX files, an ImageNet tree with its four test-only variants (3–4 classes, 8×8
JPEGs) and a DTD folder with its split file, laid out as the readers in ``datasets/`` expect.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, save_tiny_clip, subprocess_env, write_fashion_mnist

SCRIPTS = REPO / "scripts" / "plpp"
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
NAMES = ["tench", "goldfish", "great white shark", "tiger shark"]
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30)]
SCRIPT_ENV_VARS = ("SEEDS", "NCTX", "CSC", "CTP", "DRY_RUN", "BACKBONE", "ZS_TRAINER", "DATA", "OUTPUT")


def tiny_opts(clip_file: Path) -> list[str]:
    return ["MODEL.BACKBONE.NAME", str(clip_file), "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16"]


def script_env(data: Path, output: Path, **extra: str) -> dict:
    env = subprocess_env()
    for name in SCRIPT_ENV_VARS:
        env.pop(name, None)
    env.update(DATA=str(data), OUTPUT=str(output), PYTHON=PYTHON, NCTX="4")
    env.update(extra)
    return env


def run_script(name: str, *args: str, env: dict, cwd: Path = REPO, timeout: int = 300,
               extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / name), *args, *extra], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    return res


def commands(res: subprocess.CompletedProcess) -> list[str]:
    """The train.py command lines a script printed."""
    return [line for line in res.stdout.splitlines() if line.startswith("+ ") and "train.py" in line]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def plpp_results(*args: str) -> dict:
    res = subprocess.run([PYTHON, "-m", "plpp.results", *args, "--format", "json"], cwd=REPO, env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


# ----------------------------------------------------------------------------------------- fabricated data


def write_jpegs(folder: Path, n: int, colour: tuple[int, int, int], stem: str = "img") -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        shade = tuple(max(0, c - 15 * i) for c in colour)
        Image.new("RGB", (8, 8), shade).save(folder / f"{stem}_{i}.JPEG", format="JPEG")
        names.append(f"{stem}_{i}.JPEG")
    return names


def write_classnames(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {c}\n" for w, c in zip(WNIDS[:n], NAMES[:n])))


def write_imagenet_family(root: Path) -> None:
    """``imagenet/`` (4 classes) and the variants (-V2 4 classes, -Sketch 4, -A and -R 3) as the readers expect."""
    imagenet = root / "imagenet"
    write_classnames(imagenet, 4)
    for wnid, colour in zip(WNIDS, COLOURS):
        write_jpegs(imagenet / "images" / "train" / wnid, 3, colour)
        write_jpegs(imagenet / "images" / "val" / wnid, 2, colour, stem="val")
    v2 = root / "imagenetv2"
    write_classnames(v2, 4)
    for k, colour in enumerate(COLOURS):
        write_jpegs(v2 / "imagenetv2-matched-frequency-format-val" / str(k), 2, colour)
    for folder, image_dir, n in (("imagenet-sketch", "images", 4), ("imagenet-adversarial", "imagenet-a", 3),
                                 ("imagenet-rendition", "imagenet-r", 3)):
        write_classnames(root / folder, n)
        for wnid, colour in zip(WNIDS[:n], COLOURS):
            write_jpegs(root / folder / image_dir / wnid, 2, colour)
        if image_dir != "images":
            (root / folder / image_dir / "README.txt").write_text("readme\n")


def write_dtd(root: Path) -> None:
    """``dtd/images/<texture>/`` with ``split_zhou_DescribableTextures.json`` (3 classes)."""
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, (texture, colour) in enumerate(zip(["banded", "dotted", "striped"], COLOURS)):
        names = write_jpegs(root / "dtd" / "images" / texture, 5, colour, stem=texture)
        for key, chosen in (("train", names[:2]), ("val", names[2:3]), ("test", names[3:])):
            split[key] += [[f"{texture}/{name}", label, texture] for name in chosen]
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_classes=4, train_per_class=8, test_per_class=4)
    write_imagenet_family(root)
    write_dtd(root)
    return root


# ------------------------------------------------------------------------------------- arguments, dry runs


@pytest.mark.parametrize(("dataset", "shots", "cfg"), [
    ("oxford_pets", 1, "vit_b16_ep50"), ("oxford_pets", 2, "vit_b16_ep100"), ("dtd", 4, "vit_b16_ep100"),
    ("dtd", 8, "vit_b16"), ("eurosat", 16, "vit_b16"), ("imagenet", 16, "vit_b16_ep50"),
    ("imagenet", 1, "vit_b16_ep50"),
])
def test_main_epoch_rule(tmp_path, dataset, shots, cfg):
    res = ok(run_script("main.sh", "--dry-run", dataset, str(shots), env=script_env(tmp_path, tmp_path / "out")))
    lines = commands(res)
    assert len(lines) == 3  # seeds 1 2 3
    assert f"--config-file configs/trainers/PLPP/{cfg}.yaml" in lines[0]
    assert f"/{dataset}/PLPP/{cfg}_{shots}shots/nctx4_cscFalse_ctpend/seed1 " in lines[0]
    assert f"DATASET.NUM_SHOTS {shots} TRAINER.COOP.N_CTX 4 TRAINER.COOP.CSC False" in lines[0]


def test_default_configs_per_trainer(tmp_path):
    env = script_env(tmp_path, tmp_path / "out", SEEDS="1")
    expected = {
        ("main.sh", "eurosat", "16", "CoCoOp"): "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
        ("base2new_train.sh", "eurosat", "1", "CoOp"): "configs/trainers/CoOp/vit_b16_ctxv1.yaml",
        ("base2new_train.sh", "imagenet", "1", "PLPP"): "configs/trainers/PLPP/vit_b16_ep50_ctxv1.yaml",
        ("base2new_train.sh", "dtd", "1", "PLPP_CoCoOp"):
            "configs/trainers/PLPP_CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
        ("base2new_train.sh", "dtd", "1", "PLPP_MaPLe"): "configs/trainers/PLPP_MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
        ("xd_train.sh", "1", "MaPLe"): "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml",
        ("xd_train.sh", "2"): "configs/trainers/PLPP/vit_b16_ep50.yaml",
        ("zeroshot.sh", "dtd"): "configs/trainers/CoOp/vit_b16.yaml",
    }
    for (script, *args), config in expected.items():
        lines = commands(ok(run_script(script, "--dry-run", *args, env=env)))
        assert len(lines) == 1 and f"--config-file {config} " in lines[0], (script, args, lines)
    # CoCoOp's few-shot runs have no nctx folder and get no TRAINER.COOP options
    line = commands(ok(run_script("main.sh", "--dry-run", "eurosat", "16", "CoCoOp", "-", env=env)))[0]
    assert "/eurosat/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/seed1 " in line and "TRAINER.COOP" not in line


def test_argument_errors(tmp_path):
    env = script_env(tmp_path, tmp_path / "out")
    cases = [
        (("main.sh", "no_such_set", "16"), "configs/datasets/no_such_set.yaml not found"),
        (("main.sh", "dtd", "16", "PLPP", "vit_b99"), "configs/trainers/PLPP/vit_b99.yaml not found"),
        (("main.sh", "dtd", "16", "NoSuchTrainer"), "unknown trainer 'NoSuchTrainer'"),
        (("main.sh", "dtd", "sixteen"), "SHOTS must be"),
        (("main.sh", "dtd", "16", "OPTIM.LR"), "KEY VALUE pairs"),
        (("main.sh", "dtd", "16", "PLPP", "", "SEED", "3"), "SEED is set by this script"),
        (("main.sh", "dtd"), "missing argument"),
        (("main.sh", "dtd", "16", "--dryrun"), "unknown option '--dryrun'"),
        # the old order of main.sh (CFG before TRAINER) is refused with the new usage, not misread
        (("main.sh", "dtd", "16", "vit_b16_ep50"), "'vit_b16_ep50' is a config name, not a trainer"),
        (("main.sh", "dtd", "16", "", "CoOp"), "'CoOp' is a trainer, not a config of PLPP"),
        (("zeroshot.sh", "dtd", "vit_b16"), "'vit_b16' is a config name, not a trainer"),
        (("zeroshot.sh", "dtd", "CoOp"), "zeroshot.sh evaluates ZeroshotCLIP or ZeroshotCLIP2"),
        (("base2new_train.sh", "dtd", "1", "PLPP", "", "DATASET.SUBSAMPLE_CLASSES", "new"), "is set by this script"),
    ]
    for args, message in cases:
        res = run_script(*args, env=env)
        assert res.returncode != 0 and message in res.stderr, (args, res.stderr)
        if "trainer" in message and "not a" in message:
            assert "usage: " in res.stderr and "[TRAINER] [CFG]" in res.stderr
    no_data = {k: v for k, v in env.items() if k != "DATA"}
    res = run_script("main.sh", "dtd", "16", env=no_data)
    assert res.returncode != 0 and "set DATA=" in res.stderr
    assert "usage: main.sh" in ok(run_script("main.sh", "--help", env=env)).stdout


SCRIPT_ARGS = {
    "main.sh": ("dtd", "4"), "base2new.sh": ("dtd",), "base2new_train.sh": ("dtd", "1"),
    "base2new_test.sh": ("dtd", "1"), "xd_train.sh": ("1",), "xd_test.sh": ("dtd", "1"), "dg_test.sh": ("1",),
    "zeroshot.sh": ("dtd",), "demo.sh": (), "proxy.sh": (),
}


def test_every_script_is_listed_and_takes_a_trailing_dry_run(tmp_path):
    assert set(SCRIPT_ARGS) == {p.name for p in SCRIPTS.glob("*.sh")} - {"common.sh"}
    env = script_env(tmp_path, tmp_path / "out", SEEDS="1")
    for script, args in SCRIPT_ARGS.items():
        for extra in ((), ("OPTIM.MAX_EPOCH", "2")):  # after the positional arguments or after the options
            res = ok(run_script(script, *args, *extra, "--dry-run", env=env))
            assert "+ " in res.stdout and "--dry-run" not in res.stdout, (script, res.stdout)
    assert not (tmp_path / "out").exists()


def test_an_override_of_the_prompt_layout_names_its_folder(tmp_path):
    env = script_env(tmp_path, tmp_path / "out", SEEDS="1")
    env.pop("NCTX")
    line = commands(ok(run_script("main.sh", "dtd", "16", "PLPP", "", "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC",
                                  "True", "--dry-run", env=env)))[0]
    assert "/dtd/PLPP/vit_b16_16shots/nctx4_cscTrue_ctpend/seed1 " in line and "TRAINER.COOP.N_CTX 4 " in line
    res = run_script("main.sh", "dtd", "16", "PLPP", "", "TRAINER.COOP.N_CTX", "4", "--dry-run",
                     env={**env, "NCTX": "8"})
    assert res.returncode != 0 and "NCTX=8 and the option TRAINER.COOP.N_CTX 4 disagree" in res.stderr


def test_eval_scripts_need_a_finished_training_run(tmp_path):
    env = script_env(tmp_path, tmp_path / "out")
    res = run_script("base2new_test.sh", "dtd", "1", env=env)
    assert res.returncode != 0 and "bash scripts/plpp/base2new_train.sh dtd 1 PLPP vit_b16_ctxv1" in res.stderr
    unfinished = tmp_path / "out" / "imagenet" / "PLPP" / "vit_b16_ep50_16shots" / "seed1"
    (unfinished / "prompt_learner").mkdir(parents=True)
    (unfinished / "log.txt").write_text("epoch [1/50] ...\n")
    res = run_script("xd_test.sh", "dtd", "1", env=env)
    assert res.returncode != 0 and "is not finished" in res.stderr and "xd_train.sh 1 PLPP" in res.stderr
    assert not (tmp_path / "out" / "evaluation").exists()


# ------------------------------------------------------------------------------------------ real runs


def test_fewshot_two_seeds_then_skip(tmp_path, data_root, tiny_clip_file):
    # started from another directory, with a relative OUTPUT: the script finds the repo itself
    env = script_env(data_root, Path("out"), SEEDS="1 2")
    args = ("fashion_mnist", "2", "PLPP", "", *tiny_opts(tiny_clip_file))
    res = ok(run_script("main.sh", *args, env=env, cwd=tmp_path))
    assert len(commands(res)) == 2
    root = tmp_path / "out" / "fashion_mnist" / "PLPP" / "vit_b16_ep100_2shots" / "nctx4_cscFalse_ctpend"
    for seed in (1, 2):
        res_json = results(root / f"seed{seed}")
        assert res_json["seed"] == seed and res_json["num_shots"] == 2 and res_json["total"] == 16
        assert "Finish training" in (root / f"seed{seed}" / "log.txt").read_text()
        weights = res_json["backbone_weights"]  # what produced the numbers: this tiny, unmarked file
        assert weights["name"] == str(tiny_clip_file) and weights["kind"] == "other"
        assert weights["sha256"] == hashlib.sha256(tiny_clip_file.read_bytes()).hexdigest()
    assert "Backbone weights: " in (root / "seed1" / "log.txt").read_text()
    again = ok(run_script("main.sh", *args, env=env, cwd=tmp_path, extra=("--dry-run",)))
    assert commands(again) == [] and again.stdout.count("skip: ") == 2
    # another backbone into the same folders is refused, with the key that differs, not skipped
    other = save_tiny_clip(tmp_path / "other_clip.pt", seed=1)
    opts = [str(other) if o == str(tiny_clip_file) else o for o in tiny_opts(tiny_clip_file)]
    refused = run_script("main.sh", "fashion_mnist", "2", "PLPP", "", *opts, env={**env, "SEEDS": "1"}, cwd=tmp_path)
    assert refused.returncode != 0 and commands(refused) == [] and "skip: " not in refused.stdout
    assert f"MODEL.BACKBONE.NAME: saved '{tiny_clip_file}', requested '{other}'" in refused.stderr
    assert results(root / "seed1")["backbone_weights"]["name"] == str(tiny_clip_file)
    summary = plpp_results("fewshot", str(tmp_path / "out"), "--seeds", "1", "2")
    assert summary["seeds"] == [1, 2] and summary["trainer"] == "PLPP"
    assert summary["datasets"]["fashion_mnist"]["2"]["n"] == 2


def test_base2new_train_test_and_wrapper(tmp_path, data_root, tiny_clip_file):
    out = tmp_path / "out"
    env = script_env(data_root, out, SEEDS="1")
    opts = tiny_opts(tiny_clip_file)
    ok(run_script("base2new_train.sh", "fashion_mnist", "1", "PLPP", *opts, env=env))
    test = ok(run_script("base2new_test.sh", "fashion_mnist", "1", "PLPP", *opts, env=env))
    train_dir = out / "base2new" / "train_base" / "fashion_mnist" / "shots_16" / "PLPP" / "vit_b16_ctxv1" / "seed1"
    new_dir = out / "base2new" / "test_new" / "fashion_mnist" / "shots_16" / "PLPP" / "vit_b16_ctxv1" / "seed1"
    assert f"--eval-only --model-dir {train_dir} --load-epoch 1 " in commands(test)[0]
    base, new = results(train_dir), results(new_dir)
    assert (base["subsample_classes"], base["total"]) == ("base", 8)  # 2 base classes x 4 test images
    assert (new["subsample_classes"], new["total"], new["eval_only"]) == ("new", 8, True)
    wrapper = ok(run_script("base2new.sh", "fashion_mnist", "PLPP", *opts, env=env))  # both finished: skipped
    assert commands(wrapper) == [] and wrapper.stdout.count("skip: ") == 2
    summary = plpp_results("base2new", str(out), "--seeds", "1")
    assert summary["datasets"]["fashion_mnist"]["base"]["n"] == 1
    assert summary["datasets"]["fashion_mnist"]["new"]["n"] == 1


def test_cross_dataset_and_domain_generalisation(tmp_path, data_root, tiny_clip_file):
    out = tmp_path / "out"
    env = script_env(data_root, out)
    opts = tiny_opts(tiny_clip_file)
    ok(run_script("xd_train.sh", "1", "PLPP", *opts, env=env))
    model_dir = out / "imagenet" / "PLPP" / "vit_b16_ep50_16shots" / "seed1"
    assert results(model_dir)["total"] == 8  # 4 classes x 2 val images
    xd = ok(run_script("xd_test.sh", "dtd", "1", "PLPP", *opts, env=env))
    assert f"--model-dir {model_dir} --load-epoch 1 " in commands(xd)[0]
    dg = ok(run_script("dg_test.sh", "1", "PLPP", *opts, env=env))
    assert len(commands(dg)) == 4
    evaluation = out / "evaluation" / "PLPP" / "vit_b16_ep50_16shots"
    totals = {d: results(evaluation / d / "seed1")["total"]
              for d in ("dtd", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")}
    assert totals == {"dtd": 6, "imagenetv2": 8, "imagenet_sketch": 8, "imagenet_a": 6, "imagenet_r": 6}
    assert "skip: " in ok(run_script("xd_test.sh", "dtd", "1", "PLPP", *opts, env=env)).stdout
    xd_summary = plpp_results("xd", str(out), "--seeds", "1")
    dg_summary = plpp_results("dg", str(out), "--seeds", "1")
    assert xd_summary["seeds"] == dg_summary["seeds"] == [1]
    assert "dtd" in json.dumps(xd_summary) and "imagenet_sketch" in json.dumps(dg_summary)


def test_zeroshot(tmp_path, data_root, tiny_clip_file):
    import plpp.trainers  # noqa: F401
    from plpp.engine import TRAINER_REGISTRY

    if "ZeroshotCLIP" not in TRAINER_REGISTRY.registered_names():
        pytest.skip("ZeroshotCLIP is not registered yet")
    out = tmp_path / "out"
    opts = tiny_opts(tiny_clip_file)
    res = ok(run_script("zeroshot.sh", "fashion_mnist", "", *opts, env=script_env(data_root, out)))
    assert "--eval-only" in commands(res)[0]
    zs = results(out / "ZeroshotCLIP" / "vit_b16" / "fashion_mnist")
    assert zs["trainer"] == "ZeroshotCLIP" and zs["total"] == 16
    assert zs["backbone_weights"]["kind"] == "other" and len(zs["backbone_weights"]["sha256"]) == 64


# ------------------------------------------------------------------------------------------------ demo


def test_demo_with_a_local_weights_file(tmp_path, data_root, tiny_clip_file):
    out = tmp_path / "demo"
    env = script_env(data_root, out, BACKBONE=str(tiny_clip_file))
    opts = [o for i, o in enumerate(tiny_opts(tiny_clip_file)) if i > 1]  # the demo sets the backbone itself
    res = ok(run_script("demo.sh", *opts, "DATALOADER.TRAIN_X.BATCH_SIZE", "8", env=env))
    text = res.stdout
    for step in ("== 1/4", "== 2/4", "== 3/4 CoOp", "== 3/4 PLPP", "== 4/4"):
        assert step in text
    assert f"CLIP weights for {tiny_clip_file}" in text and "Fashion-MNIST ready" in text
    assert "configs/trainers/CoOp/demo_cpu.yaml" in text and "configs/trainers/PLPP/demo_cpu.yaml" in text
    runs = {t: out / "fashion_mnist" / t / "demo_cpu_16shots" / "nctx4_cscFalse_ctpend" / "seed1"
            for t in ("CoOp", "PLPP")}
    accs = {t: results(d)["accuracy"] for t, d in runs.items()}
    table = text[text.index("== 4/4"):]
    assert re.search(r"\| CoOp +\| " + re.escape(f"{accs['CoOp']:.2f}"), table)
    assert re.search(r"\| PLPP +\| " + re.escape(f"{accs['PLPP']:.2f}") + r" +\| [\d.]+ +\| " +
                     re.escape(f"{accs['PLPP'] - accs['CoOp']:+.2f}"), table)
    assert "FashionMNIST, 16 shots, seed 1, 16 test images, backbone tiny_clip.pt (weights that are not an " \
        "OpenAI release)" in table
    # the same demo with another BACKBONE into the same OUTPUT stops, naming the key; it shows no old table
    other = save_tiny_clip(tmp_path / "other_clip.pt", seed=2)
    again = run_script("demo.sh", *opts, "DATALOADER.TRAIN_X.BATCH_SIZE", "8", env={**env, "BACKBONE": str(other)})
    assert again.returncode != 0 and "== 4/4" not in again.stdout and "skip: " not in again.stdout
    assert f"MODEL.BACKBONE.NAME: saved '{tiny_clip_file}', requested '{other}'" in again.stderr


def test_demo_stops_before_training_without_weights(tmp_path, data_root):
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    blocked = "http://127.0.0.1:9"  # no download, even on a machine with internet access
    env = script_env(data_root, tmp_path / "demo", BACKBONE="ViT-B/32", PLPP_CLIP_CACHE=str(cache),
                     http_proxy=blocked, https_proxy=blocked, HTTP_PROXY=blocked, HTTPS_PROXY=blocked, no_proxy="",
                     NO_PROXY="")
    res = run_script("demo.sh", env=env)
    assert res.returncode != 0
    assert f"{cache}/ViT-B-32.pt is missing" in res.stderr and "set BACKBONE to a local .pt file" in res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("error:") == 1
    assert "== 2/4" not in res.stdout and not (tmp_path / "demo").exists()


def test_demo_configs_match_the_recipe():
    from plpp.engine.cli import get_parser, setup_cfg

    for trainer in ("CoOp", "PLPP"):
        cfg = setup_cfg(get_parser().parse_args(["--trainer", trainer, "--config-file",
                                                 f"{REPO}/configs/trainers/{trainer}/demo_cpu.yaml"]))
        assert cfg.MODEL.BACKBONE.NAME == "ViT-B/32" and cfg.TRAINER.COOP.PREC == "fp32"
        assert (cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.LR) == (5, 1, 0.002)
        assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.TEST.BATCH_SIZE) == (32, 100)
        assert cfg.DATALOADER.NUM_WORKERS == 2 and cfg.DATASET.TEST_PER_CLASS == 100


def test_prepare_fashion_mnist_without_files_says_how_to_get_them(tmp_path, monkeypatch, capsys):
    from plpp.datasets import idx
    from plpp.tools import prepare_fashion_mnist

    monkeypatch.setattr(idx, "SYSTEM_DIRS", [])
    monkeypatch.setattr(idx, "MIRRORS", ["http://127.0.0.1:9/"])
    monkeypatch.setenv("no_proxy", "*")
    assert prepare_fashion_mnist.main(["--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and f"{tmp_path}/fashion-mnist/" in err


def test_compare_needs_finished_runs(tmp_path, capsys):
    from plpp.tools import compare

    assert compare.main([str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ random CLIP


def test_random_clip_file_loads(tmp_path, capsys):
    from plpp.clip_utils import is_vision_transformer, load_clip
    from plpp.tools import random_clip

    path = tmp_path / "clip_random.pt"
    assert random_clip.main(["--arch", "tiny", "-o", str(path)]) == 0
    assert "not results" in capsys.readouterr().out
    model = load_clip(str(path))
    assert model.visual.input_resolution == 32 and is_vision_transformer(model.visual)
    assert model.text_projection.shape == (64, 32)
    for arch in ("ViT-B/32", "ViT-B/16"):
        a = random_clip.ARCHS[arch]
        assert (a["embed_dim"], a["vision_width"], a["vision_layers"], a["transformer_width"]) == (512, 768, 12, 512)


def test_scripts_pass_shellcheck():
    import shutil

    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    res = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout

