"""The proxy world: a CLIP pretrained here on synthetic images, so a method's effect is measurable offline.

The quick world is built once per session with the real tool (``python -m plpp.tools.proxy_world``)
and every accuracy below is measured with ``train.py`` on it: zero-shot far above chance, CoOp above
zero-shot on the base classes, and a host whose prompt gets no gradient caught by the same check.
The learning check runs on the drawings: there the hand-crafted "a photo of a {}." is a poor prompt,
so a prompt that learns gains many points (on the quick world's photos zero-shot is close to what a
prompt alone can reach, as on easy real datasets).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from plpp.proxy.build import (
    DATASET_FOLDERS,
    LABEL,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    BuildSpec,
    ProxyWorldError,
    build_world,
    sha256_file,
)
from plpp.proxy.pretrain import ARCH, PretrainConfig
from plpp.proxy.world import world_classes
from tests.conftest import PYTHON, REPO, subprocess_env

CHANCE_ALL = 100 / 48  # zero-shot over the 48 classes
CHANCE_HALF = 100 / 24  # base or new half
#: The check every host must pass on the quick world's drawings: base accuracy after training at least
#: this many points above zero-shot with the prompt it starts from ("a photo of a {}."). CoOp gains
#: about 27 points here; a prompt that does not learn gains none.
LEARNING_MARGIN = 10.0
#: The training run of the learning check: 16 shots of the 24 base classes, a few epochs.
LEARNING_OPTS = ["DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "4",
                 "OPTIM.LR", "0.02", "OPTIM.WARMUP_EPOCH", "0"]


def run(cmd: list[str], timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env={**subprocess_env(), **env}, capture_output=True, text=True,
                          timeout=timeout)


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory) -> Path:
    """The quick proxy world, built once per session by the command-line tool."""
    out = tmp_path_factory.mktemp("proxy") / "world"
    res = ok(run([PYTHON, "-m", "plpp.tools.proxy_world", "--out", str(out), "--quick"]))
    assert "zero-shot accuracy" in res.stdout and LABEL in res.stdout
    return out


def manifest(world: Path) -> dict:
    return json.loads((world / MANIFEST_FILE).read_text())


def train_py(world: Path, out: Path, trainer: str, *opts: str, config: str = "CoOp/proxy.yaml",
             dataset: str = "proxy_world", flags: tuple[str, ...] = ()) -> list[str]:
    return ["--root", str(world / "data"), "--seed", "1", "--trainer", trainer, *flags,
            "--dataset-config-file", str(REPO / f"configs/datasets/{dataset}.yaml"),
            "--config-file", str(REPO / "configs/trainers" / config), "--output-dir", str(out),
            "MODEL.BACKBONE.NAME", str(world / WEIGHTS_FILE), *opts]


def accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "results.json").read_text())["accuracy"]


def learned_above_zero_shot(trained: float, zero_shot: float) -> bool:
    """The learning check: a trained prompt must beat the zero-shot prompt it started from."""
    return trained >= zero_shot + LEARNING_MARGIN


# ---------------------------------------------------------------------------------------------- the tool


def test_quick_world_is_cached_and_marked(quick_world):
    weights = quick_world / WEIGHTS_FILE
    before = (weights.stat().st_mtime_ns, sha256_file(str(weights)))
    res = ok(run([PYTHON, "-m", "plpp.tools.proxy_world", "--out", str(quick_world), "--quick"]))
    assert "cached build" in res.stdout and "Pretraining" not in res.stdout
    assert (weights.stat().st_mtime_ns, sha256_file(str(weights))) == before
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    origin = saved["plpp_origin"]
    assert origin["kind"] == "proxy_world" and origin["tool"] == "plpp.tools.proxy_world" and origin["quick"]
    assert origin["zero_shot"] == manifest(quick_world)["zero_shot"]

    from plpp.clip_utils import import_clip, load_clip

    model = load_clip(str(weights))  # the loader takes the state dict beside the marker
    assert type(model) is import_clip().model.CLIP and model.visual.input_resolution == ARCH["image_resolution"]
    assert model.token_embedding.weight.shape == (ARCH["vocab_size"], ARCH["transformer_width"])
    assert model.text_projection.shape == (ARCH["transformer_width"], ARCH["embed_dim"])


def test_dataset_is_the_coop_split_layout(quick_world):
    import plpp.datasets  # noqa: F401  (registers ProxyWorld)
    from plpp.engine import DATASET_REGISTRY, get_cfg_default

    per_class = manifest(quick_world)["spec"]["per_class"]
    for name, folder in (("ProxyWorld", "proxy_world"), ("ProxyWorldDrawing", "proxy_world_drawing")):
        split = json.loads((quick_world / "data" / folder / f"split_{folder}.json").read_text())
        assert {k: len(v) for k, v in split.items()} == {k: 48 * n for k, n in per_class.items()}
        cfg = get_cfg_default()
        cfg.DATASET.ROOT = str(quick_world / "data")
        dataset = DATASET_REGISTRY.get(name)(cfg)
        assert dataset.classnames == [c.name for c in world_classes()]
        assert len(dataset.test) == 48 * per_class["test"]
    names = [c.name for c in world_classes()]
    assert names[0] == "red circle" and len(set(names)) == 48
    base, new = ({tuple(n.split()) for n in half} for half in (names[:24], names[24:]))
    assert {c for c, _ in base}.isdisjoint({c for c, _ in new})  # new classes: colours never trained on
    assert {s for _, s in base} == {s for _, s in new}  # every shape in both halves


def test_zero_shot_is_far_above_chance_and_matches_the_tool(quick_world, tmp_path):
    ok(run([PYTHON, "train.py", *train_py(quick_world, tmp_path / "zs", "ZeroshotCLIP", flags=("--eval-only",))]))
    measured = accuracy(tmp_path / "zs")
    assert measured == pytest.approx(manifest(quick_world)["zero_shot"]["photo"]["all"], abs=0.01)
    assert measured > 8 * CHANCE_ALL


# ---------------------------------------------------------------------------------------- the learning check

FROZEN_PROMPT_HOST = textwrap.dedent("""
    import sys

    import torch

    from plpp.engine import TRAINER_REGISTRY
    from plpp.engine.cli import main
    from plpp.trainers.coop import CoOp


    @TRAINER_REGISTRY.register()
    class FrozenPromptCoOp(CoOp):
        # CoOp whose context never receives a gradient: a deliberately broken host.
        def build_custom_clip(self, classnames, clip_model):
            model = super().build_custom_clip(classnames, clip_model)
            model.prompt_learner.ctx.register_hook(torch.zeros_like)
            return model


    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def coop_base_run(quick_world, tmp_path_factory) -> Path:
    """CoOp trained on the base classes of the quick world's drawings (base2new_train.sh's folder layout)."""
    out = tmp_path_factory.mktemp("b2n") / "base2new/train_base/proxy_world_drawing/shots_16/CoOp/proxy/seed1"
    ok(run([PYTHON, "train.py", *train_py(quick_world, out, "CoOp", *LEARNING_OPTS, dataset="proxy_world_drawing")]))
    return out


def test_coop_learns_above_zero_shot_and_a_frozen_prompt_is_caught(quick_world, coop_base_run, tmp_path):
    zero_shot = manifest(quick_world)["zero_shot"]["drawing"]["base"]
    assert zero_shot > 4 * CHANCE_HALF
    assert learned_above_zero_shot(accuracy(coop_base_run), zero_shot)

    frozen = tmp_path / "frozen"
    ok(run([PYTHON, "-c", FROZEN_PROMPT_HOST, *train_py(quick_world, frozen, "FrozenPromptCoOp", *LEARNING_OPTS,
                                                         dataset="proxy_world_drawing")]))
    assert "FrozenPromptCoOp" in (frozen / "log.txt").read_text()
    assert not learned_above_zero_shot(accuracy(frozen), zero_shot)


def test_proxy_label_in_results_json_and_tables(coop_base_run):
    from plpp.provenance import KIND_LABELS

    # The marker of the weights file, read by the provenance record of every run.
    record = json.loads((coop_base_run / "results.json").read_text())["backbone_weights"]
    assert record["kind"] == "proxy_world" and KIND_LABELS[record["kind"]] == LABEL
    assert record["origin"]["tool"] == "plpp.tools.proxy_world"
    # The tables made from the run say what its numbers are.
    root = coop_base_run.parents[6]
    res = ok(run([PYTHON, "-m", "plpp.results", "base2new", str(root)]))
    assert f"NOT A RESULT: {LABEL}" in res.stdout and "[proxy]" in res.stdout
    res = ok(run([PYTHON, "-m", "plpp.tools.compare", str(coop_base_run)]))
    assert res.stdout.startswith(f"NOT A RESULT: {LABEL}")


def test_linear_probe_records_the_proxy_backbone(quick_world, tmp_path):
    """Every trainer's results.json names its backbone's kind, the linear probe (no prompt) included."""
    out = tmp_path / "probe"
    ok(run([PYTHON, "train.py", *train_py(quick_world, out, "LinearProbeCLIP", "DATASET.NUM_SHOTS", "1",
                                          "DATASET.TEST_PER_CLASS", "2", "TRAINER.LINEAR_PROBE.SEARCH_STEPS", "0",
                                          config="LinearProbeCLIP/proxy.yaml")]))
    assert json.loads((out / "results.json").read_text())["backbone_weights"]["kind"] == "proxy_world"


# ------------------------------------------------------------------------------------ sweep, report, scripts


def test_sweep_selects_on_val_and_the_report_prints_it(quick_world, tmp_path):
    from plpp.tools import proxy_report, proxy_sweep

    out = tmp_path / "proxy"
    tiny = ["OPTIM.MAX_EPOCH", "1", "DATASET.TEST_PER_CLASS", "4"]
    with pytest.raises(SystemExit) as refused:  # only PLPP versions are swept
        proxy_sweep.main(["--world", str(quick_world), "--output", str(out), "--trainer", "CoOp"])
    assert refused.value.code == 2 and not out.exists()
    assert proxy_sweep.main(["--world", str(quick_world), "--output", str(out), "--seeds", "1", "--only",
                             "HIDDEN", "--", *tiny]) == 0
    sweep = json.loads((out / "sweep" / "sweep_proxy_world_drawing_PLPP.json").read_text())
    assert [v["name"] for v in sweep["variants"]] == ["default", "hidden_after"]
    for variant in sweep["variants"]:
        val = json.loads((out / "sweep/val/proxy_world_drawing/PLPP" / variant["name"] / "seed1/val.json").read_text())
        assert val["split"] == "val" and val["total"] == 24 * 4  # min(16, 4) val shots of 24 base classes
        assert variant["val"]["values"] == [val["accuracy"]] and variant["new"]["n"] == 1
    best = max(sweep["variants"], key=lambda v: v["val"]["mean"])
    assert sweep["selection"]["HIDDEN"]["variant"] == best["name"]
    default_dir = out / "base2new/train_base/proxy_world_drawing/shots_16/PLPP/proxy/seed1"
    assert (default_dir / "results.json").is_file()  # the defaults live in proxy.sh's own tree
    text = proxy_report.report(out, str(quick_world), [1])
    assert LABEL[1:] in text and "| PLPP | proxy |" in text and "`HIDDEN after`" in text
    assert text.count("PLPP's open choices") == 1  # under its own dataset only
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{proxy_report.BEGIN}\nold\n{proxy_report.END}\nend\n")
    proxy_report.update_doc(str(doc), text)
    assert doc.read_text() == f"intro\n{proxy_report.BEGIN}\n{text}{proxy_report.END}\nend\n"


def test_every_host_and_its_plpp_version_has_a_proxy_config():
    from plpp.engine import get_cfg_default
    from plpp.trainers import extend_cfg

    root = REPO / "configs" / "trainers"
    plpp_versions = sorted(p.name for p in root.glob("PLPP_*"))
    hosts = ["CoOp", "LinearProbeCLIP", *(name[5:] for name in plpp_versions)]
    for trainer in ["PLPP", *hosts, *plpp_versions]:
        cfg = get_cfg_default()
        extend_cfg(cfg)
        cfg.merge_from_file(str(root / trainer / "proxy.yaml"))
        assert cfg.MODEL.BACKBONE.NAME == "data/proxy-world/proxy-clip.pt" and cfg.INPUT.SIZE == (32, 32), trainer


def test_proxy_script_dry_run_lists_every_host(tmp_path):
    env = {"WORLD": str(tmp_path / "world"), "OUTPUT": str(tmp_path / "out"), "PYTHON": PYTHON, "QUICK": "1"}
    res = ok(run(["bash", "scripts/plpp/proxy.sh", "--dry-run"], **env))
    text = res.stdout
    assert text.splitlines()[0].endswith(LABEL[1:] + ".")
    assert f"-m plpp.tools.proxy_world --out {tmp_path / 'world'} --quick" in text
    hosts = ("CoOp", "CoCoOp", "MaPLe", "IVLP", "PromptSRC", "KgCoOp", "ProGrad")
    for trainer in ("ZeroshotCLIP", "PLPP", "LinearProbeCLIP", *hosts, *(f"PLPP_{h}" for h in hosts[1:])):
        assert f"--trainer {trainer} " in text
        if trainer not in ("ZeroshotCLIP", "LinearProbeCLIP"):
            assert f"train_base/proxy_world_drawing/shots_16/{trainer}/proxy/seed1" in text
    assert "train_base/proxy_world_drawing/shots_16/LinearProbeCLIP" not in text  # few-shot only
    assert "-m plpp.tools.proxy_sweep" in text and "-m plpp.tools.proxy_report" in text
    assert not (tmp_path / "out").exists()
    bad = run(["bash", "scripts/plpp/proxy.sh", "--dry-run"], TRAINERS="CoOp Nope", **env)
    assert bad.returncode == 1 and "unknown trainer 'Nope'" in bad.stderr


def test_demo_falls_back_to_the_proxy_world_without_weights(quick_world, tmp_path):
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    blocked = "http://127.0.0.1:9"
    env = dict(WORLD=str(quick_world), QUICK="1", OUTPUT=str(tmp_path / "demo"), DATA=str(tmp_path / "data"),
               PYTHON=PYTHON, PLPP_CLIP_CACHE=str(cache), http_proxy=blocked, https_proxy=blocked,
               HTTP_PROXY=blocked, HTTPS_PROXY=blocked, no_proxy="", NO_PROXY="")
    env_run = {k: v for k, v in subprocess_env().items() if k not in ("BACKBONE", "SEEDS", "NCTX", "DRY_RUN")}
    tiny = ["OPTIM.MAX_EPOCH", "1", "DATASET.TEST_PER_CLASS", "5", "DATALOADER.TRAIN_X.BATCH_SIZE", "128"]
    res = subprocess.run(["bash", "scripts/plpp/demo.sh", *tiny],
                         cwd=REPO, env={**env_run, **env}, capture_output=True, text=True, timeout=600)
    ok(res)
    lines = res.stdout.splitlines()
    assert lines[0].startswith("PROXY WORLD DEMO") and LABEL in lines[0]
    title = lines[lines.index(next(ln for ln in lines if ln.startswith("== 4/4"))) + 2]
    assert title.startswith("CoOp vs PLPP on the proxy world") and title.endswith(LABEL)
    assert "Fashion-MNIST" not in res.stdout
    for trainer in ("CoOp", "PLPP"):
        run_dir = tmp_path / "demo" / "proxy_world" / trainer / "proxy_16shots" / "nctx4_cscFalse_ctpend" / "seed1"
        assert accuracy(run_dir) > 4 * CHANCE_ALL


# ------------------------------------------------------------------------------------ determinism and errors


def tiny_spec(seed: int = 0) -> BuildSpec:
    return BuildSpec(PretrainConfig(steps=2, batch_size=16, warmup_steps=1, seed=seed),
                     {"train": 2, "val": 1, "test": 1}, quick=True)


def test_same_seed_same_bytes_and_a_changed_file_is_rebuilt(tmp_path):
    logs: list[str] = []
    first, built = build_world(str(tmp_path / "a"), tiny_spec(), log=logs.append)
    second, _ = build_world(str(tmp_path / "b"), tiny_spec(), log=logs.append)
    assert built and first["weights_sha256"] == second["weights_sha256"]
    assert first["images_sha256"] == second["images_sha256"] and first["split_sha256"] == second["split_sha256"]
    other, _ = build_world(str(tmp_path / "c"), tiny_spec(seed=1), log=logs.append)
    assert other["weights_sha256"] != first["weights_sha256"]
    assert other["images_sha256"]["photo"] != first["images_sha256"]["photo"]

    again, built = build_world(str(tmp_path / "a"), tiny_spec(), log=logs.append)
    assert not built and again == first
    (tmp_path / "a" / WEIGHTS_FILE).write_bytes(b"truncated")
    logs.clear()
    rebuilt, built = build_world(str(tmp_path / "a"), tiny_spec(), log=logs.append)
    assert built and rebuilt["weights_sha256"] == first["weights_sha256"]
    assert any("Rebuilding" in line and "missing or changed" in line for line in logs)


def test_tool_refuses_an_unusable_out_folder(tmp_path):
    a_file = tmp_path / "file.pt"
    a_file.write_text("x")
    res = run([PYTHON, "-m", "plpp.tools.proxy_world", "--out", str(a_file), "--quick"])
    assert res.returncode == 1 and res.stderr.count("error:") == 1 and "is a file" in res.stderr
    assert "Traceback" not in res.stderr
    foreign = tmp_path / "foreign"
    (foreign / "data" / DATASET_FOLDERS["photo"]).mkdir(parents=True)
    with pytest.raises(ProxyWorldError, match="not written by a finished build"):
        build_world(str(foreign), tiny_spec())
    res = run([PYTHON, "-m", "plpp.tools.proxy_world", "--out", str(tmp_path / "w"), "--seed", "-1"])
    assert res.returncode == 2 and "--seed must be >= 0" in res.stderr


def test_reader_without_a_world_says_how_to_build_one(tmp_path):
    import plpp.datasets  # noqa: F401
    from plpp.datasets import DatasetError
    from plpp.engine import DATASET_REGISTRY, get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(tmp_path)
    with pytest.raises(DatasetError, match=r"proxy_world does not exist.*python -m plpp.tools.proxy_world"):
        DATASET_REGISTRY.get("ProxyWorld")(cfg)
    (tmp_path / "proxy_world" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="split file not found.*incomplete"):
        DATASET_REGISTRY.get("ProxyWorld")(cfg)


def test_every_proxy_config_parses():
    from plpp.engine.cli import get_parser, setup_cfg

    for trainer in ("CoOp", "PLPP", "CoCoOp", "PLPP_CoCoOp", "MaPLe", "PLPP_MaPLe"):
        path = REPO / "configs/trainers" / trainer / "proxy.yaml"
        cfg = setup_cfg(get_parser().parse_args(["--trainer", trainer, "--config-file", str(path),
                                                 "--dataset-config-file",
                                                 str(REPO / "configs/datasets/proxy_world.yaml")]))
        assert tuple(cfg.INPUT.SIZE) == (32, 32) and cfg.MODEL.BACKBONE.NAME.endswith("proxy-clip.pt")
        assert os.path.basename(os.path.dirname(cfg.MODEL.BACKBONE.NAME)) == "proxy-world"


def test_zero_shot_base_classes_count_as_the_base_of_base_to_new(tmp_path):
    """proxy.sh evaluates zero-shot CLIP on the base classes in ``train_base``: an evaluation, not a mismatch."""
    from plpp.results.records import FolderFacts, folder_mismatches

    for trainer, expected in (("ZeroshotCLIP", []), ("CoOp", ["eval_only true, the folder holds a training run"])):
        meta = {"trainer": trainer, "seed": 1, "num_shots": 16, "subsample_classes": "base", "eval_only": True}
        facts = FolderFacts(trainer, "proxy_world_drawing", 1, 16, "base", eval_only=False)
        assert folder_mismatches(tmp_path, meta, facts) == expected
