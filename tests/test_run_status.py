"""``plpp.tools.run_status``: a folder is only *done* when it holds a result made with the requested config.

The saved ``config.yaml`` files are real dumps of ``train.py``'s merged config (``setup_cfg``), the
weights files real tiny CLIPs; ``run_status`` runs in-process (the scripts' tests run it from bash).
"""

from __future__ import annotations

import json

import yaml

from plpp.engine.cli import get_parser, setup_cfg
from plpp.engine.runinfo import config_diff
from plpp.tools.run_status import CONFLICT, DONE, TODO, main, run_status
from tests.conftest import save_tiny_clip, train_args


def finished_run(out, args, **record) -> None:
    """What a finished training run leaves: config.yaml of ``args`` and results.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(setup_cfg(get_parser().parse_args(args)).dump())
    (out / "results.json").write_text(json.dumps({"format": "plpp-results/1", "accuracy": 50.0,
                                                  "eval_only": False, **record}))


def test_done_todo_and_conflicts(tmp_path):
    clip = save_tiny_clip(tmp_path / "clip.pt")
    out = tmp_path / "run"
    args = train_args(tmp_path, clip, out, opts=("OPTIM.MAX_EPOCH", "1"))
    assert run_status(out, "train", args).state == TODO  # nothing there
    out.mkdir()
    (out / "log.txt").write_text("epoch [1/1] ...\nFinish training\n")  # crashed in the final test
    assert run_status(out, "train", args).state == TODO
    (out / "log.txt").unlink()

    finished_run(out, args)
    assert run_status(out, "train", args).state == DONE
    # volatile keys (workers, print frequency, the data root) do not make another experiment
    assert run_status(out, "train", [*args, "DATALOADER.NUM_WORKERS", "3"]).state == DONE

    other = run_status(out, "train", train_args(tmp_path, clip, out, opts=("OPTIM.MAX_EPOCH", "2",
                                                                            "TRAINER.COOP.N_CTX", "4")))
    assert other.state == CONFLICT
    assert "OPTIM.MAX_EPOCH: saved 1, requested 2" in other.message
    assert "TRAINER.COOP.N_CTX: saved 16, requested 4" in other.message and f"Delete {out}" in other.message

    clip2 = save_tiny_clip(tmp_path / "clip2.pt", seed=1)
    backbone = run_status(out, "train", train_args(tmp_path, clip2, out, opts=("OPTIM.MAX_EPOCH", "1")))
    assert backbone.state == CONFLICT and f"MODEL.BACKBONE.NAME: saved '{clip}', requested '{clip2}'" in \
        backbone.message

    assert run_status(out, "eval", args).state == CONFLICT  # a training result where an evaluation belongs
    (out / "config.yaml").unlink()
    assert "without config.yaml" in run_status(out, "train", args).message


def test_same_backbone_name_with_other_file_content_is_a_conflict(tmp_path):
    clip = save_tiny_clip(tmp_path / "clip.pt")
    out = tmp_path / "run"
    args = train_args(tmp_path, clip, out)
    from plpp.provenance import identify_backbone

    finished_run(out, args, backbone_weights=identify_backbone(str(clip)))
    assert run_status(out, "train", args).state == DONE
    save_tiny_clip(clip, seed=5)  # the same path now holds other weights
    status = run_status(out, "train", args)
    assert status.state == CONFLICT and "MODEL.BACKBONE.NAME (file content)" in status.message


def test_config_diff_ignores_volatile_keys():
    saved = {"OUTPUT_DIR": "a", "OPTIM": {"LR": 0.1, "MAX_EPOCH": 5}, "INPUT": {"SIZE": [32, 32]}}
    now = {"OUTPUT_DIR": "b", "OPTIM": {"LR": 0.2, "MAX_EPOCH": 5}, "INPUT": {"SIZE": [32, 32]}, "NEW": 1}
    assert config_diff(saved, now) == [("NEW", None, 1), ("OPTIM.LR", 0.1, 0.2)]
    assert config_diff(yaml.safe_load(yaml.safe_dump(saved)), saved) == []


def test_command_line_exit_codes(tmp_path, capsys):
    clip = save_tiny_clip(tmp_path / "clip.pt")
    out = tmp_path / "run"
    args = train_args(tmp_path, clip, out)
    finished_run(out, args)

    def status(*train) -> tuple[int, str, str]:
        code = main([str(out), "--mode", "train", "--", *train])
        return (code, *capsys.readouterr())

    code, stdout, _ = status(*args)
    assert code == 0 and "finished with the requested config" in stdout
    code, _, err = status(*args, "OPTIM.LR", "0.5")
    assert code == 1 and err.startswith("error: ") and "OPTIM.LR" in err
    code, _, err = status(*args, "OPTIM.NOPE", "1")
    assert code == 2 and "OPTIM.NOPE" in err
    assert main([str(tmp_path / "empty"), "--mode", "eval", "--", *args]) == 3
