"""``python -m plpp.datasets.check``: the table, the problems it lists and its exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from plpp.datasets import check
from tests.test_datasets import REPO, make_class_folders, make_food101, make_imagenet

torch.set_num_threads(1)


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "plpp.datasets.check", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=str(REPO))


def test_cli_good_root_then_corrupt_image(tmp_path):
    make_food101(tmp_path, n_classes=3)
    make_class_folders(tmp_path / "caltech-101" / "101_ObjectCategories", ["accordion", "Faces"], per_class=5)
    good = run_check("--root", str(tmp_path), "--verify-images")
    assert good.returncode == 0, good.stdout + good.stderr
    lines = {line.split()[0]: line.split() for line in good.stdout.splitlines() if line.strip()}
    assert lines["Food101"][2:7] == ["ok", "3", "18", "9", "6"]
    assert lines["Caltech101"][2:7] == ["ok", "2", "4", "2", "4"]  # round(2.5) = 2, as in Dassl
    assert "generated split_zhou_Caltech101.json" in good.stdout
    assert lines["OxfordPets"][2] == "absent"

    broken = tmp_path / "food-101" / "images" / "class_002" / "test_1.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    bad = run_check("--root", str(tmp_path), "--dataset", "food101", "--verify-images")
    assert bad.returncode == 1
    assert "PROBLEM" in bad.stdout and str(broken) in bad.stdout and "1 of 33 images cannot be read" in bad.stdout


def test_cli_requested_dataset_with_problem(tmp_path):
    base = make_imagenet(tmp_path)
    (base / "images" / "val" / "n01440764").rename(base / "images" / "n01440764_moved")
    write = base / "images" / "val" / "ILSVRC2012_val_00000001.JPEG"
    write.write_bytes(b"x")
    result = run_check("--root", str(tmp_path), "--dataset", "ImageNet", "--dataset", "OxfordPets")
    assert result.returncode == 1
    assert "[ImageNet]" in result.stdout and "wnid folders" in result.stdout
    assert "[OxfordPets]" in result.stdout and "dataset folder not found" in result.stdout


def test_check_main_exit_codes(tmp_path, capsys):
    assert check.main(["--root", str(tmp_path)]) == 1  # nothing found
    assert "No dataset folder found" in capsys.readouterr().out
    assert check.main(["--root", str(tmp_path / "nope")]) == 1
    try:
        check.main(["--root", str(tmp_path), "--dataset", "oxford_petz"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "Did you mean" in capsys.readouterr().err
    make_food101(tmp_path, n_classes=2)
    assert check.main(["--root", str(tmp_path), "--dataset", "FOOD101"]) == 0
