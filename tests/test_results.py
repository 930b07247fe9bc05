"""Tests of ``plpp.results`` (``plpp-results``) and ``parse_test_res.py`` on fabricated output trees.

Every tree is written in ``tmp_path`` with real Dassl-style ``log.txt`` files (and our
``results.json`` for some runs), then summarised through the functions and through the command line
(``python -m plpp.results`` / ``python parse_test_res.py`` in a subprocess with ``PYTHONPATH`` set to
the repository root, so the tests work before the package is installed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plpp.results import published
from plpp.results.aggregate import Stat, harmonic_mean, summarize_base2new
from plpp.results.cli import main
from plpp.results.layout import find_base2new_runs
from plpp.results.names import BENCHMARK_DATASETS, DATASET_FOLDERS, DG_TARGETS, XD_TARGETS
from plpp.results.parse import load_run, parse_log

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------- helpers


def result_block(acc: float, total: int = 1000) -> str:
    """Dassl's evaluator output (totals with thousands separators)."""
    correct = round(total * acc / 100)
    return (
        "=> result\n"
        f"* total: {total:,}\n"
        f"* correct: {correct:,}\n"
        f"* accuracy: {acc}%\n"
        f"* error: {100 - acc:.1f}%\n"
        f"* macro_f1: {acc - 0.3:.1f}%\n"
    )


def write_log(run_dir: Path, acc: float | None, kind: str = "train", name: str = "log.txt") -> Path:
    """A log of a training run (``train``: CoOp wording, ``maple``: old Dassl wording), an eval-only run
    (``eval``) or a crashed training run (``acc=None``). Training logs contain a decoy validation
    result before the end of training that must be ignored."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "Loading trainer: PLPP\nLoading dataset: OxfordPets\n"
    if kind in ("train", "maple"):
        text += "epoch [1/5] batch [20/20] loss 1.2 acc 60.0\n" + result_block(11.1)
        if acc is not None:
            text += ("Finish training\n" if kind == "train" else "Finished training\n") + result_block(acc)
            text += "Elapsed: 0:01:02\n"
    elif acc is not None:
        text += "Loading weights to prompt_learner from model.pth.tar-5\nEvaluate on the *test* set\n"
        text += result_block(acc)
    path = run_dir / name
    path.write_text(text)
    return path


OPENAI = {"name": "ViT-B/16", "sha256": "5806e77c" * 8, "kind": "openai", "release": "ViT-B/16"}


def weights(kind: str = "openai", sha: str = "5806e77c" * 8) -> dict[str, object]:
    """A ``backbone_weights`` record of the given kind."""
    return {**OPENAI, "sha256": sha, "kind": kind, "release": "ViT-B/16" if kind == "openai" else None}


def write_json(run_dir: Path, acc: float, **meta: object) -> Path:
    """Our engine's ``results.json`` (with a log that says something else, to check precedence)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {"format": "plpp-results/1", "trainer": "PLPP", "seed": 1, "eval_only": False,
            "backbone": "ViT-B/16", "backbone_weights": OPENAI, **meta}
    data.update(total=1000, correct=round(10 * acc), accuracy=acc, error=100 - acc, macro_f1=acc - 0.3)
    path = run_dir / "results.json"
    path.write_text(json.dumps(data))
    write_log(run_dir, 1.0)
    return path


def cli(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run ``python -m plpp.results ARGS`` as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "plpp.results", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def parse_res(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python parse_test_res.py ARGS``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "parse_test_res.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


def run_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# Base-to-new data where the mean of per-seed HMs differs from the HM of the seed means.
B2N_DATA = {
    "oxford_pets": {"base": [90.0, 80.0, 70.0], "new": [50.0, 70.0, 60.0]},
    "dtd": {"base": [60.0, 60.0, 60.0], "new": [90.0, 90.0, 90.0]},
}


@pytest.fixture
def b2n_root(tmp_path: Path) -> Path:
    """``ROOT/base2new`` with OxfordPets from upstream-style logs (MaPLe wording for the training
    runs) and DTD from ``results.json``."""
    root = tmp_path / "output"
    for dataset, parts in B2N_DATA.items():
        for part, accs in parts.items():
            folder = "train_base" if part == "base" else "test_new"
            for seed, acc in enumerate(accs, start=1):
                run = (
                    root
                    / "base2new"
                    / folder
                    / dataset
                    / "shots_16"
                    / "PLPP"
                    / "vit_b16_ep10"
                    / f"seed{seed}"
                )
                if dataset == "dtd":
                    write_json(run, acc, dataset="DescribableTextures", subsample_classes=part, seed=seed,
                               eval_only=part == "new", num_shots=16)
                else:
                    write_log(run, acc, "maple" if part == "base" else "eval")
    return root


def fewshot_tree(root: Path) -> dict[tuple[str, int], list[float]]:
    """CoOp-style few-shot tree (with the nctx level) for 2 datasets x 2 shots x 3 seeds."""
    data = {
        ("oxford_pets", 1): [85.0, 86.0, 87.0],
        ("oxford_pets", 16): [91.0, 92.0, 93.0],
        ("eurosat", 1): [50.0, 60.0, 70.0],
        ("eurosat", 16): [80.0, 82.0, 84.0],
    }
    for (dataset, shots), accs in data.items():
        for seed, acc in enumerate(accs, start=1):
            variant = root / dataset / "PLPP" / f"vit_b16_ep50_{shots}shots" / "nctx16_cscFalse_ctpend"
            write_log(variant / f"seed{seed}", acc)
    return data


def transfer_tree(root: Path, targets: tuple[str, ...], seeds: tuple[int, ...] = (1, 2, 3)) -> None:
    """ImageNet training runs plus eval-only runs on ``targets``; target i, seed s -> 50 + i + s."""
    cfg = "vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots"
    for seed in seeds:
        write_log(root / "imagenet" / "PLPP" / cfg / f"seed{seed}", 70.0 + seed)
        for i, dataset in enumerate(targets):
            write_log(root / "evaluation" / "PLPP" / cfg / dataset / f"seed{seed}", 50.0 + i + seed, "eval")


# ------------------------------------------------------------------------------------------ parsing


def test_parse_log_training_run_ignores_results_before_end_of_training(tmp_path: Path) -> None:
    log = write_log(tmp_path / "seed1", 81.2)
    result = parse_log(log, "train")
    assert result is not None
    assert result.accuracy == 81.2 and result.total == 1000 and result.correct == 812
    assert result.error == pytest.approx(18.8) and result.macro_f1 == pytest.approx(80.9)


def test_parse_log_old_dassl_wording_eval_only_and_crashed(tmp_path: Path) -> None:
    assert parse_log(write_log(tmp_path / "a", 70.5, "maple"), "train").accuracy == 70.5  # type: ignore[union-attr]
    eval_log = write_log(tmp_path / "b", 64.3, "eval")
    assert parse_log(eval_log, "eval").accuracy == 64.3  # type: ignore[union-attr]
    assert parse_log(eval_log, "auto").accuracy == 64.3  # type: ignore[union-attr]
    assert parse_log(eval_log, "train") is None  # an eval-only log has no end of training
    crashed = write_log(tmp_path / "c", None)
    assert parse_log(crashed, "train") is None  # the decoy validation result is not a test result


def test_parse_log_accepts_totals_without_separator(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text("Finish training\n=> result\n* total: 1000\n* correct: 500\n* accuracy: 50.0%\n")
    result = parse_log(log, "train")
    assert result is not None and result.total == 1000 and result.correct == 500


def test_results_json_wins_then_newest_log(tmp_path: Path) -> None:
    run = tmp_path / "seed1"
    write_json(run, 77.7, dataset="OxfordPets")
    result = load_run(run, "train")
    assert result is not None and result.accuracy == 77.7 and result.meta["dataset"] == "OxfordPets"
    (run / "results.json").write_text("{not json")
    assert load_run(run, "train").accuracy == 1.0  # type: ignore[union-attr]
    write_log(run, 66.6, name="log.txt-2024-01-02-03-04-05")  # Dassl's name for a rerun's log
    assert load_run(run, "train").accuracy == 66.6  # type: ignore[union-attr]


def test_stat_population_std_and_ci95() -> None:
    stat = Stat((80.0, 82.0, 84.0), (1, 2, 3))
    assert stat.mean == pytest.approx(82.0)
    assert stat.std == pytest.approx(np.std([80, 82, 84]))  # ddof=0, not 2.0
    assert stat.std == pytest.approx(math.sqrt(8 / 3))
    assert stat.ci95 == pytest.approx(1.96 * math.sqrt(8 / 3) / math.sqrt(3))
    assert Stat().mean is None and Stat().n == 0


def test_published_numbers_have_sources_and_add_up() -> None:
    trainers = {"ZeroshotCLIP", "CoOp", "CoCoOp", "MaPLe", "IVLP", "PromptSRC", "KgCoOp", "ProGrad",
                "LinearProbeCLIP", "ProDA", "CoPrompt"}
    for protocol in published.PROTOCOLS:
        for name, row in published.TABLES[protocol].items():
            assert row.source.strip() and row.trainer in trainers, (protocol, name)
            assert "PLPP" not in name and "PLPP" not in row.trainer  # no primary source for PLPP's numbers
    b2n = published.TABLES["base2new"]
    assert b2n["ProDA"].datasets == {}  # per-dataset ProDA: one OCR'd reprint only, left out
    for name, row in b2n.items():
        base, new, hm = row.average
        assert harmonic_mean(base, new) == pytest.approx(hm, abs=0.011), name
        for dataset, (b, n, h) in row.datasets.items():
            assert harmonic_mean(b, n) == pytest.approx(h, abs=0.011), (name, dataset)
        if row.datasets:  # the per-dataset rows reproduce the printed 11-dataset average
            assert set(row.datasets) == set(BENCHMARK_DATASETS)
            assert np.mean([v[0] for v in row.datasets.values()]) == pytest.approx(base, abs=0.011), name
            assert np.mean([v[1] for v in row.datasets.values()]) == pytest.approx(new, abs=0.011), name
    for protocol, targets in (("xd", XD_TARGETS), ("dg", DG_TARGETS)):
        for name, row in published.TABLES[protocol].items():
            assert set(row.datasets) == set(targets) and row.source_value is not None
            assert row.average == pytest.approx(np.mean(list(row.datasets.values())), abs=0.011), name
    assert set(published.TABLES["fewshot"]["LinearProbeCLIP"].average) == {1, 2, 4, 8, 16}
    # nothing in the package refers to where the numbers were collected, or to recalled numbers
    for path in (REPO / "plpp").rglob("*.py"):
        text = path.read_text()
        assert "ANCHORS" not in text and "recalled" not in text.lower() and "/work/" not in text, path


def test_published_averages_are_like_with_like() -> None:
    coop = published.TABLES["base2new"]["CoOp"]
    full = published.comparable_average("base2new", coop, BENCHMARK_DATASETS)
    assert full.values == (82.69, 63.22, 71.66) and full.how.startswith("printed average over the 11")
    part = published.comparable_average("base2new", coop, ["oxford_pets", "dtd"])
    base, new = (93.67 + 79.44) / 2, (95.29 + 41.18) / 2
    assert part.values == pytest.approx((base, new, harmonic_mean(base, new)))
    assert "recomputed over these 2 dataset(s)" in part.how
    progrand = published.comparable_average("base2new", published.TABLES["base2new"]["ProGrad"], ["dtd"])
    assert progrand.values is None and "only the 11-dataset average is published" in progrand.how
    foreign = published.comparable_average("base2new", coop, ["dtd", "fashion_mnist"])
    assert foreign.values is None and "fashion_mnist" in foreign.how
    fewshot = published.TABLES["fewshot"]["CoOp"]
    assert published.comparable_average("fewshot", fewshot, BENCHMARK_DATASETS, 16).values == 79.89
    assert published.comparable_average("fewshot", fewshot, BENCHMARK_DATASETS[:10], 16).values is None
    xd = published.comparable_average("xd", published.TABLES["xd"]["MaPLe"], ["dtd", "eurosat"])
    assert xd.values == pytest.approx((46.49 + 48.06) / 2)


# -------------------------------------------------------------------------------------- base-to-new


def test_base2new_hm_of_means_not_mean_of_hms(b2n_root: Path) -> None:
    summary = summarize_base2new(b2n_root, find_base2new_runs(b2n_root))[0]
    pets_hm = summary.hm("oxford_pets")
    per_seed = [harmonic_mean(b, n) for b, n in zip(*B2N_DATA["oxford_pets"].values())]
    assert pets_hm == pytest.approx(2 * 80 * 60 / 140)
    assert pets_hm != pytest.approx(float(np.mean(per_seed)))
    avg = summary.average()
    assert avg["base"] == pytest.approx(70.0) and avg["new"] == pytest.approx(75.0)
    assert avg["hm"] == pytest.approx(2 * 70 * 75 / 145)
    assert avg["hm"] != pytest.approx((pets_hm + summary.hm("dtd")) / 2)  # type: ignore[operator]


def test_base2new_json_shape_via_cli(b2n_root: Path) -> None:
    proc = cli("base2new", b2n_root, "--format", "json")  # ROOT, not ROOT/base2new
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {"datasets", "average", "missing"} <= set(doc)
    assert set(doc["datasets"]) == {"oxford_pets", "dtd"}
    pets = doc["datasets"]["oxford_pets"]
    assert set(pets) == {"base", "new", "hm"}
    assert set(pets["base"]) == {"mean", "std", "n", "seeds", "weights"}
    assert pets["base"]["weights"] == ["unrecorded"] and doc["datasets"]["dtd"]["base"]["weights"] == ["openai"]
    assert pets["base"]["mean"] == pytest.approx(80.0)
    assert pets["base"]["std"] == pytest.approx(np.std([90, 80, 70]))
    assert pets["new"]["n"] == 3
    assert pets["hm"] == pytest.approx(2 * 80 * 60 / 140)
    assert doc["datasets"]["dtd"]["base"]["mean"] == pytest.approx(60.0)  # from results.json
    assert set(doc["average"]) >= {"base", "new", "hm"}
    assert doc["average"]["hm"] == pytest.approx(2 * 70 * 75 / 145)
    # only what was run (or asked for) is expected: the 9 other benchmark datasets are not "missing"
    assert doc["missing"] == [] and proc.stderr == ""
    assert doc["seeds_found"] == [1, 2, 3] and doc["average"]["datasets"] == ["oxford_pets", "dtd"]


def test_base2new_missing_seed_and_crashed_run_are_reported(
    b2n_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b2n = b2n_root / "base2new"
    new3 = b2n / "test_new" / "oxford_pets" / "shots_16" / "PLPP" / "vit_b16_ep10" / "seed3"
    for f in new3.iterdir():
        f.unlink()
    new3.rmdir()
    crashed = b2n / "train_base" / "dtd" / "shots_16" / "PLPP" / "vit_b16_ep10" / "seed2"
    (crashed / "results.json").unlink()
    write_log(crashed, None)
    code, out, err = run_main(capsys, "base2new", b2n, "--format", "json", "--seeds", "1", "2", "3")
    assert code == 0
    doc = json.loads(out)
    assert doc["datasets"]["oxford_pets"]["new"]["n"] == 2
    assert doc["datasets"]["oxford_pets"]["new"]["mean"] == pytest.approx(60.0)
    assert doc["datasets"]["dtd"]["base"]["n"] == 2
    entries = {(m["dataset"], m.get("part"), m["seed"], m["reason"]) for m in doc["missing"]}
    assert ("oxford_pets", "new", 3, "missing") in entries
    assert ("dtd", "base", 2, "incomplete") in entries
    assert str(new3) in err and str(crashed) in err
    # --strict turns missing results into exit status 1
    assert run_main(capsys, "base2new", b2n, "--strict")[0] == 1


def test_base2new_table_and_compare_published(b2n_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "base2new", b2n_root, "--compare", "published", "--ci95")
    assert code == 0
    assert "OxfordPets" in out and "DTD" in out and "Average" in out
    assert "80.00 ± " in out and "68.57" in out and "72.41" in out
    assert "PromptSRC HM" in out and "over seeds 1,2,3\n" in out
    # like with like: 2 datasets of ours beside published averages over the same 2, never the 11-dataset ones
    base, new = (95.33 + 83.37) / 2, (97.30 + 62.97) / 2  # PromptSRC on OxfordPets and DTD
    assert f"{harmonic_mean(base, new):.2f}" in out and "recomputed over these 2 dataset(s)" in out
    tables = out.split("Sources of the published numbers")[0]
    for eleven in ("79.97", "71.66", "75.83", "78.55", "76.16"):  # 11-dataset averages (ProGrad: only that)
        assert eleven not in tables
    assert "ProGrad: not comparable: only the 11-dataset average is published" in out
    assert "Sources of the published numbers" in out and "PromptKD (CVPR 2024) Table 1" in out
    assert "KgCoOp README" in out and "CoCoOp-paper setting" in out  # which CoOp baseline
    code, out, _ = run_main(capsys, "base2new", b2n_root, "--format", "json", "--compare", "published",
                            "--published-methods", "CoOp")  # fmt: skip
    doc = json.loads(out)
    assert list(doc["published"]) == ["CoOp"] and "MaPLe README" in doc["published"]["CoOp"]["source"]
    assert doc["published"]["CoOp"]["average"] == {"base": 82.69, "new": 63.22, "hm": 71.66}
    assert doc["published"]["CoOp"]["datasets"]["dtd"]["hm"] == 54.24
    comp = doc["published_comparison"]["CoOp"]
    assert comp["datasets"] == ["oxford_pets", "dtd"] and comp["base"] == pytest.approx((93.67 + 79.44) / 2)
    code, _, err = run_main(capsys, "base2new", b2n_root, "--compare", "published", "--published-methods", "PLPP")
    assert code == 2 and "no published base2new numbers for PLPP" in err


def test_base2new_several_methods(b2n_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = b2n_root / "base2new" / "train_base" / "dtd" / "shots_16" / "CoOp" / "vit_b16_ep50" / "seed1"
    write_log(other, 79.0)
    code, out, _ = run_main(capsys, "base2new", b2n_root, "--format", "json")
    doc = json.loads(out)
    assert set(doc) == {"methods"}
    assert set(doc["methods"]) == {"PLPP/vit_b16_ep10", "CoOp/vit_b16_ep50"}
    code, out, _ = run_main(capsys, "base2new", b2n_root, "--format", "json", "--trainer", "plpp")
    assert json.loads(out)["trainer"] == "PLPP"
    code, _, err = run_main(capsys, "base2new", b2n_root, "--trainer", "Nope")
    assert code == 2 and "PLPP/vit_b16_ep10" in err


def test_base2new_csv(b2n_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "base2new", b2n_root, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["dataset"] for r in rows] == ["oxford_pets", "dtd", "average"]
    assert float(rows[0]["base_mean"]) == pytest.approx(80.0) and rows[0]["base_n"] == "3"
    assert float(rows[2]["hm"]) == pytest.approx(2 * 70 * 75 / 145) and rows[2]["n_datasets"] == "2"


# ----------------------------------------------------------------------------------------- few-shot


def test_fewshot_json_csv_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = fewshot_tree(tmp_path)
    # PromptSRC-style tree without the nctx level is another method
    write_log(tmp_path / "dtd" / "PromptSRC" / "vit_b16_c2_ep50_4shots" / "seed1", 60.0)
    code, out, err = run_main(capsys, "fewshot", tmp_path, "--format", "json", "--trainer", "PLPP")
    assert code == 0
    doc = json.loads(out)
    assert doc["variant"] == "nctx16_cscFalse_ctpend" and doc["cfg"] == "vit_b16_ep50"
    assert doc["datasets"]["eurosat"]["1"]["mean"] == pytest.approx(60.0)
    assert doc["datasets"]["eurosat"]["1"]["std"] == pytest.approx(np.std(data[("eurosat", 1)]))
    assert doc["average"]["16"] == {"mean": pytest.approx((92.0 + 82.0) / 2), "n_datasets": 2,
                                    "datasets": ["oxford_pets", "eurosat"]}
    assert err == ""  # benchmark datasets that were never run are not expected

    code, out, _ = run_main(capsys, "fewshot", tmp_path, "--format", "csv", "--compare", "published")
    rows = list(csv.DictReader(io.StringIO(out)))
    plpp = [r for r in rows if r["trainer"] == "PLPP" and r["dataset"] != "average"]
    assert len(plpp) == 4 and {r["n"] for r in plpp} == {"3"} and {r["weights"] for r in plpp} == {"unrecorded"}
    assert "PromptSRC/vit_b16_c2_ep50" in {r["method"] for r in rows}
    assert not [r for r in rows if r["method"].startswith("published:")]  # only 11-dataset averages exist

    code, out, _ = run_main(capsys, "fewshot", tmp_path, "--cfg", "vit_b16_ep50", "--compare", "published")
    assert "92.00 ± 0.82" in out and "1 shot" in out and "16 shots" in out and "EuroSAT" in out
    assert "79.89" not in out and "CoOp: not comparable: only the 11-dataset average is published" in out


def test_plot_fewshot_writes_png(tmp_path: Path) -> None:
    fewshot_tree(tmp_path / "out")
    fig = tmp_path / "figs" / "fewshot.png"
    proc = cli("plot", "fewshot", tmp_path / "out", "-o", fig, "--compare", "published")
    assert proc.returncode == 0, proc.stderr
    assert fig.stat().st_size > 1000 and fig.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------------- cross-dataset / domain gen.


def test_xd_source_targets_and_average(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    transfer_tree(tmp_path, (*XD_TARGETS, "imagenetv2"))  # a DG folder must not enter the xd average
    code, out, err = run_main(capsys, "xd", tmp_path, "--format", "json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["source"]["imagenet"]["mean"] == pytest.approx(72.0)
    assert set(doc["targets"]) == set(XD_TARGETS)
    assert doc["targets"]["caltech101"]["mean"] == pytest.approx(52.0)
    assert doc["average"] == {"mean": pytest.approx(52.0 + 4.5), "n_datasets": 10, "datasets": list(XD_TARGETS)}
    code, out, _ = run_main(capsys, "xd", tmp_path / "evaluation", "--compare", "published")
    assert code == 0 and "Caltech101" in out and "MaPLe (published)" in out and "66.30" in out


def test_dg_reports_missing_target(tmp_path: Path) -> None:
    transfer_tree(tmp_path, ("imagenetv2", "imagenet_sketch", "imagenet_a"), seeds=(1, 2))
    proc = cli("dg", tmp_path, "--format", "json", "--compare", "published")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["targets"]["imagenet_a"]["n"] == 2 and doc["seeds_found"] == [1, 2]
    assert doc["average"]["n_datasets"] == 3
    # the protocol implies all 4 targets; the seeds found are 1 and 2, so no seed 3 is expected
    assert [(m["dataset"], m["seed"]) for m in doc["missing"]] == [("imagenet_r", None)]
    assert "imagenet_r" in proc.stderr and "seed3" not in proc.stderr
    # the published average is over the same 3 targets as ours
    assert doc["published_comparison"]["CoOp"]["mean"] == pytest.approx((64.20 + 47.99 + 49.71) / 3)
    asked = cli("dg", tmp_path, "--format", "json", "--seeds", "1", "2", "3")
    reasons = {(m["dataset"], m["seed"]) for m in json.loads(asked.stdout)["missing"]}
    assert ("imagenet", 3) in reasons and ("imagenet_a", 3) in reasons and "seed3" in asked.stderr


# -------------------------------------------------------------------------------------- user errors


def test_cli_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = cli("fewshot", tmp_path)  # empty dir
    assert proc.returncode == 2
    assert "no fewshot runs found" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    code, _, err = run_main(capsys, "base2new", tmp_path / "nope")
    assert code == 2 and "does not exist" in err
    code, _, err = run_main(capsys, "xd", tmp_path)
    assert code == 2 and "evaluation" in err
    code, _, err = run_main(capsys, "base2new", tmp_path)
    assert code == 2 and "base2new" in err


# --------------------------------------------------------------------------------- parse_test_res.py


def test_parse_test_res_matches_coop_output(tmp_path: Path) -> None:
    exp = tmp_path / "oxford_pets" / "PLPP" / "vit_b16_ep50_16shots" / "nctx16_cscFalse_ctpend"
    for seed, acc in enumerate([91.0, 92.0, 93.5], start=1):
        write_log(exp / f"seed{seed}", acc, "maple" if seed == 2 else "train")
    (exp / ".hidden").mkdir()
    proc = parse_res(exp)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"Parsing files in {exp}"
    assert lines[1] == f"file: {exp / 'seed1' / 'log.txt'}. accuracy: 91.00%."
    assert lines[3] == f"file: {exp / 'seed3' / 'log.txt'}. accuracy: 93.50%."
    std = np.std([91.0, 92.0, 93.5])
    assert f"* accuracy: 92.17% +- {std:.2f}%" in lines
    proc = parse_res(exp, "--ci95", "--keyword", "macro_f1")
    assert f"* macro_f1: 91.87% +- {1.96 * std / math.sqrt(3):.2f}%" in proc.stdout


def test_parse_test_res_test_log_multi_exp_and_errors(tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation"
    for i, dataset in enumerate(["dtd", "eurosat"]):
        for seed in (1, 2):
            write_log(evaluation / dataset / f"seed{seed}", 40.0 + 10 * i + seed, "eval")
    assert parse_res(evaluation / "dtd").returncode == 1  # eval-only logs need --test-log
    proc = parse_res(evaluation, "--test-log", "--multi-exp")
    assert proc.returncode == 0, proc.stderr
    assert "* accuracy: 41.50% +- 0.50%" in proc.stdout and "* accuracy: 51.50% +- 0.50%" in proc.stdout
    assert proc.stdout.splitlines()[-2:] == ["Average performance", "* accuracy: 46.50%"]

    (evaluation / "dtd" / "seed2" / "log.txt").unlink()
    proc = parse_res(evaluation / "dtd", "--test-log")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(evaluation / "dtd" / "seed2" / "log.txt") in proc.stderr
    proc = parse_res(tmp_path / "empty")
    assert proc.returncode == 1 and "not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_help_and_subsample_mismatch_is_left_out(b2n_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = cli("--help")
    assert proc.returncode == 0 and "HM = 2*B*N/(B+N) of the seed MEANS" in proc.stdout
    assert cli().returncode == 2  # argparse: a command is required
    run = b2n_root / "base2new" / "train_base" / "dtd" / "shots_16" / "PLPP" / "vit_b16_ep10" / "seed1"
    write_json(run, 99.0, dataset="DescribableTextures", subsample_classes="new")
    code, out, err = run_main(capsys, "base2new", b2n_root, "--format", "json")
    assert code == 0 and "subsample_classes 'new', the folder says 'base'" in err and str(run) in err
    doc = json.loads(out)
    assert doc["datasets"]["dtd"]["base"]["n"] == 2 and doc["datasets"]["dtd"]["base"]["mean"] == 60.0
    assert [m["reason"] for m in doc["missing"]] == ["mismatched"]
    assert run_main(capsys, "base2new", b2n_root, "--strict")[0] == 1


# ------------------------------------------------------------------------------ checked records, labels


def fewshot_json_run(root: Path, folder: str, acc: float, /, at_seed: int = 1, **record: object) -> Path:
    """A PLPP 16-shot run of ours (``results.json``) in the CoOp layout; ``record`` overrides what the file
    says (``dataset``, ``seed``, ...) so that it can disagree with its folder."""
    run = root / folder / "PLPP" / "vit_b16_16shots" / "nctx16_cscFalse_ctpend" / f"seed{at_seed}"
    names = {v: k for k, v in DATASET_FOLDERS.items()}
    fields = {"trainer": "PLPP", "dataset": names.get(folder, folder), "seed": at_seed, "num_shots": 16,
              "subsample_classes": "all", **record}
    write_json(run, acc, **fields)
    return run


def test_mislabelled_results_are_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = fewshot_json_run(tmp_path, "oxford_pets", 90.0)
    fewshot_json_run(tmp_path, "oxford_pets", 92.0, 2)
    wrong = {
        fewshot_json_run(tmp_path, "dtd", 10.0, dataset="EuroSAT"): "dataset 'EuroSAT', the folder says 'dtd'",
        fewshot_json_run(tmp_path, "dtd", 11.0, 2, num_shots=4): "num_shots 4, the folder says 16 shots",
        fewshot_json_run(tmp_path, "dtd", 12.0, 3, trainer="CoOp"): "trainer 'CoOp', the folder says 'PLPP'",
        fewshot_json_run(tmp_path, "eurosat", 13.0, 1, seed=7): "seed 7, the folder says seed1",
        fewshot_json_run(tmp_path, "eurosat", 14.0, 2, eval_only=True):
            "eval_only true, the folder holds a training run",
    }
    variant = fewshot_json_run(tmp_path, "eurosat", 15.0, 3)
    (variant / "config.yaml").write_text("TRAINER:\n  COOP:\n    N_CTX: 4\n    CSC: false\n"
                                         "    CLASS_TOKEN_POSITION: end\n")
    wrong[variant] = "config.yaml has TRAINER.COOP.N_CTX 4, the folder 'nctx16_cscFalse_ctpend' says '16'"
    (good / "config.yaml").write_text("TRAINER:\n  COOP:\n    N_CTX: 16\n    CSC: false\n"
                                      "    CLASS_TOKEN_POSITION: end\n")
    # an evaluation written inside a run's folder is a record of its own, never this run's result
    write_json(good / "eval" / "other_model", 1.0, eval_only=True)
    code, out, err = run_main(capsys, "fewshot", tmp_path, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["datasets"]["oxford_pets"]["16"]["mean"] == pytest.approx(91.0)
    assert doc["datasets"]["dtd"]["16"]["n"] == 0 and doc["datasets"]["eurosat"]["16"]["n"] == 0
    mismatched = {m["path"]: m["message"] for m in doc["missing"] if m["reason"] == "mismatched"}
    assert set(mismatched) == {str(p) for p in wrong}
    for path, text in wrong.items():
        assert text in mismatched[str(path)] and text in err
    assert run_main(capsys, "fewshot", tmp_path, "--strict")[0] == 1


def test_cells_from_non_openai_weights_are_tagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fewshot_json_run(tmp_path, "oxford_pets", 30.0, backbone_weights=weights("random", "aa" * 32))
    fewshot_json_run(tmp_path, "dtd", 40.0, backbone_weights=weights("proxy_world", "bb" * 32))
    fewshot_json_run(tmp_path, "eurosat", 50.0, backbone_weights=weights("other", "cc" * 32))
    write_log(tmp_path / "caltech101" / "PLPP" / "vit_b16_16shots" / "nctx16_cscFalse_ctpend" / "seed1", 60.0)
    code, out, err = run_main(capsys, "fewshot", tmp_path)
    assert code == 0
    assert out.startswith("NOT A RESULT: random weights: not a result; synthetic proxy world: not a result on "
                          "real data\n")
    assert "30.00 [random]" in out and "40.00 [proxy]" in out and "50.00 [other]" in out and "60.00 [?]" in out
    assert "[random] random weights: not a result" in out and "[?] backbone weights not recorded" in out
    assert "different backbone files" in err  # one method, several backbone files
    code, out, _ = run_main(capsys, "fewshot", tmp_path, "--format", "json")
    doc = json.loads(out)
    assert doc["weights"] == ["openai", "other", "proxy_world", "random", "unrecorded"][1:]
    assert doc["datasets"]["oxford_pets"]["16"]["weights"] == ["random"]
    fig = tmp_path / "fig.png"
    assert run_main(capsys, "plot", "fewshot", tmp_path, "-o", fig)[0] == 0 and fig.read_bytes()[:8] == PNG_MAGIC
    fewshot_json_run(tmp_path / "clean", "dtd", 70.0)
    code, out, _ = run_main(capsys, "fewshot", tmp_path / "clean")
    assert "NOT A RESULT" not in out and "[" not in out.split("\n")[3]


def test_datasets_shots_seeds_options_and_one_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fewshot_tree(tmp_path)  # oxford_pets and eurosat, 1 and 16 shots, seeds 1-3
    code, out, err = run_main(capsys, "fewshot", tmp_path, "--datasets", "eurosat", "--shots", "16",
                              "--seeds", "1")
    assert code == 0 and err == ""
    assert "one run per cell (seed 1): no spread;" in out and "OxfordPets" not in out and "1 shot " not in out
    assert "| 80.00 " in out and "±" not in out  # one seed: no spread, not "± 0.00"
    code, out, err = run_main(capsys, "fewshot", tmp_path, "--datasets", "eurosat", "dtd", "--format", "json")
    doc = json.loads(out)
    assert doc["datasets"]["dtd"]["16"]["n"] == 0 and "dtd 16 shots: no runs" in err  # asked, so expected
    assert "oxford_pets" not in doc["datasets"]
    code, _, err = run_main(capsys, "fewshot", tmp_path, "--datasets", "oxfordpets")
    assert code == 2 and "unknown dataset oxfordpets" in err and "oxford_pets" in err
    code, out, _ = run_main(capsys, "fewshot", tmp_path, "--seeds", "1", "--format", "json")
    one = json.loads(out)["datasets"]["eurosat"]["1"]
    assert one == {"mean": 50.0, "std": None, "n": 1, "seeds": [1], "weights": ["unrecorded"]}
    shutil_rm = tmp_path / "eurosat" / "PLPP" / "vit_b16_ep50_16shots" / "nctx16_cscFalse_ctpend" / "seed3"
    for f in shutil_rm.iterdir():
        f.unlink()
    shutil_rm.rmdir()
    code, out, _ = run_main(capsys, "fewshot", tmp_path, "--datasets", "eurosat")
    assert "over seeds 1,2,3;" in out and "81.00 ± 1.00 [n=2]" in out


def test_fewshot_published_average_only_beside_all_11_datasets(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    for i, dataset in enumerate(BENCHMARK_DATASETS):
        fewshot_json_run(tmp_path, dataset, 70.0 + i)
    code, out, _ = run_main(capsys, "fewshot", tmp_path, "--compare", "published")
    assert code == 0 and "| CoOp (published) " in out and "79.89" in out and "75.00" in out
    assert "the PromptSRC paper's few-shot table, as reprinted in the CasPL (ECCV 2024) README" in out
    code, out, _ = run_main(capsys, "fewshot", tmp_path, "--compare", "published", "--datasets",
                            *BENCHMARK_DATASETS[1:])
    assert "79.89" not in out.split("Sources of")[0] and "(published)" not in out
    fig = tmp_path / "fig.png"
    assert run_main(capsys, "plot", "fewshot", tmp_path, "-o", fig, "--compare", "published")[0] == 0


def test_protocols_doc_lists_the_published_averages_with_their_sources() -> None:
    lines = (REPO / "docs" / "PROTOCOLS.md").read_text().splitlines()
    for name, row in published.TABLES["base2new"].items():
        line = next(ln for ln in lines if ln.startswith(f"| `{name}`"))
        assert all(f"| {v:.2f} |" in line for v in row.average), name
        assert line.rstrip(" |").endswith(row.average_source.split(" (")[0]), name
