"""The ``train.py`` command line (CoOp's flags and merge order) as an importable function."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import os.path as osp
import re
import sys

import yaml
from yacs.config import CfgNode

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, RuntimeError,
                                                 FloatingPointError, OSError)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train or evaluate a CLIP prompt learner (CoOp-compatible command line).",
        epilog="Trailing KEY VALUE pairs override config keys, e.g. OPTIM.MAX_EPOCH 10 TRAINER.PLPP.TOPK 5.")
    p.add_argument("--root", type=str, default="", help="path to the dataset root (DATASET.ROOT)")
    p.add_argument("--output-dir", type=str, default="", help="output directory (OUTPUT_DIR)")
    p.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from (RESUME)")
    p.add_argument("--seed", type=int, default=None, help="random seed; any value >= 0, including 0")
    p.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    p.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    p.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    p.add_argument("--config-file", type=str, default="", help="trainer config file")
    p.add_argument("--dataset-config-file", type=str, default="", help="dataset config file")
    p.add_argument("--trainer", type=str, default="", help="name of trainer (TRAINER.NAME)")
    p.add_argument("--backbone", type=str, default="", help="CLIP name or weights file (MODEL.BACKBONE.NAME)")
    p.add_argument("--head", type=str, default="", help="name of head")
    p.add_argument("--eval-only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    p.add_argument("--load-epoch", type=int, default=None, help="load model weights at this epoch for evaluation")
    p.add_argument("--no-train", action="store_true", help="build the trainer, then stop")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line")
    return p


def _all_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        keys.extend(_all_keys(v, f"{prefix}{k}.") if isinstance(v, CfgNode) else [f"{prefix}{k}"])
    return keys


def _explain_key_error(cfg: CfgNode, exc: Exception, source: str) -> ValueError:
    text = str(exc.args[0]) if exc.args else str(exc)
    if "Non-existent" not in text:
        return ValueError(f"{source}: {text}")
    key = text.split(":")[-1].strip().strip("'\"")
    close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"Unknown config key '{key}' in {source}.{hint}")


def _line_of(path: str, key: str) -> str:
    """``, line N`` of the first line that sets the last part of ``key`` in ``path`` ("" when not found)."""
    last = key.split(".")[-1]
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if re.match(rf"\s*{re.escape(last)}\s*:", line):
                    return f", line {number}"
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def _check_yaml_mapping(path: str, what: str) -> None:
    """Parse ``path`` first, so a syntax error or a non-mapping top level is one line naming file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{what} {path}{where}: not valid YAML ({problem}). Fix the file (configs/ has examples).") \
            from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not a text (UTF-8) YAML file.") from None
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{what} {path}, line 1: the top level must be a mapping of KEY: value lines (as in "
                         f"configs/), not a {type(data).__name__}.")


def _merge_file(cfg: CfgNode, path: str, what: str) -> None:
    if not osp.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    _check_yaml_mapping(path, what)
    try:
        cfg.merge_from_file(path)
    except (KeyError, AssertionError) as exc:
        raise _explain_key_error(cfg, exc, path) from None
    except (ValueError, TypeError, AttributeError) as exc:
        text = str(exc)
        key = text.rsplit("config key:", 1)[-1].strip() if "config key:" in text else ""
        raise ValueError(f"{path}{_line_of(path, key) if key else ''}: {text}") from None


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """defaults → trainer keys → dataset YAML → trainer YAML → flags → trailing opts → freeze."""
    from plpp.engine import get_cfg_default
    from plpp.trainers import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        _merge_file(cfg, args.dataset_config_file, "Dataset config file (--dataset-config-file)")
    if args.config_file:
        _merge_file(cfg, args.config_file, "Trainer config file (--config-file)")
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head
    opts = args.opts or []
    if len(opts) % 2:
        raise ValueError(f"Trailing options must be KEY VALUE pairs; got an odd number: {' '.join(opts)}")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as exc:
        raise _explain_key_error(cfg, exc, "the command-line options") from None
    except ValueError as exc:
        raise ValueError(f"Command-line options: {exc}") from None
    cfg.freeze()
    return cfg


FINISHED, REFUSED = 1, 2  # what rank 0 found in the output folder, told to every rank


def _claim_output_folder(cfg: CfgNode, args: argparse.Namespace):
    """Lock the output folder and check this command may write there (rank 0; every rank learns the outcome).

    Returns ``(lock, message)``: ``message`` is set when the folder already holds this run, finished.
    """
    from plpp.engine.distributed import broadcast_code, is_main_process
    from plpp.engine.lock import RunLock
    from plpp.engine.runinfo import evaluation_identity, prepare_evaluation, prepare_training

    lock = message = error = None
    if is_main_process():
        try:
            lock = RunLock(cfg.OUTPUT_DIR).acquire()
            if args.eval_only:
                message = prepare_evaluation(cfg, evaluation_identity(args.model_dir, args.load_epoch))
            else:
                message = prepare_training(cfg)
        except USER_ERRORS as exc:
            error = exc
    code = broadcast_code(REFUSED if error else FINISHED if message else 0)
    if code == REFUSED:
        if lock is not None:
            lock.release()
        raise error or RuntimeError("stopped: rank 0 refused the output folder (its message says why)")
    return lock, message


def run(args: argparse.Namespace) -> int:
    import plpp.datasets  # noqa: F401  (registers the datasets)
    import plpp.trainers  # noqa: F401  (registers the trainers)
    from plpp.engine import BACKEND, DATASET_REGISTRY, TRAINER_REGISTRY, build_trainer, set_random_seed, setup_logger
    from plpp.engine.checkpoint import remove_stale_temp_files
    from plpp.engine.config import check_engine_cfg
    from plpp.engine.distributed import (
        init_distributed,
        is_dist,
        is_main_process,
        launched_with_torchrun,
        shared_random_seed,
    )
    from plpp.engine.registry import unknown_name_message
    from plpp.engine.runinfo import evaluation_folder, evaluation_identity, write_run_info
    from plpp.engine.utils import FILE_ONLY, collect_env_info, logger, set_deterministic

    cfg = setup_cfg(args)
    for kind, registry, name in (("trainer (--trainer)", TRAINER_REGISTRY, cfg.TRAINER.NAME),
                                 ("dataset (DATASET.NAME)", DATASET_REGISTRY, cfg.DATASET.NAME)):
        if name not in registry:
            raise ValueError(unknown_name_message(kind, name, registry.registered_names()))
    check_engine_cfg(cfg)
    if args.eval_only:
        folder = evaluation_folder(cfg, args.model_dir, args.load_epoch)
        if folder != cfg.OUTPUT_DIR:  # a training run's folder: its files stay untouched
            cfg.defrost()
            cfg.OUTPUT_DIR = folder
            cfg.freeze()
    if launched_with_torchrun():
        if BACKEND == "dassl":
            raise RuntimeError("Multi-process (torchrun) runs need the built-in engine: Dassl has no DDP "
                               "support. Set PLPP_ENGINE=builtin.")
        init_distributed(cfg.DISTRIBUTED.BACKEND)
    lock, finished = _claim_output_folder(cfg, args)
    try:
        if finished:
            if is_main_process():
                print(finished)
            return 0
        if cfg.SEED >= 0:
            logger.debug(f"Setting fixed seed: {cfg.SEED}")
            set_random_seed(cfg.SEED)
        elif is_dist():  # unseeded, but every rank must draw the same few-shot subset and initial prompt
            set_random_seed(shared_random_seed())
        if cfg.DETERMINISTIC:
            set_deterministic(True)
        setup_logger(cfg.OUTPUT_DIR)
        if is_main_process():
            for path in remove_stale_temp_files(cfg.OUTPUT_DIR):
                logger.info(f"Removed {path}, a temporary file left by an interrupted run")
            if lock is not None and lock.previous:
                logger.info(f"Took over the lock of an earlier run in this folder (PID {lock.previous.get('pid')}), "
                            "which is no longer running")
        logger.info("Collecting env info ...\n" + collect_env_info() + f"\nPLPP engine backend: {BACKEND}")
        logger.info("Arguments: " + " ".join(sys.argv[1:]))
        logger.info("Config:\n" + cfg.dump(), extra=FILE_ONLY)
        logger.info(f"Full config: {os.path.join(cfg.OUTPUT_DIR, 'config.yaml')} (also in log.txt)")
        record = evaluation_identity(args.model_dir, args.load_epoch) if args.eval_only else {"mode": "train"}
        write_run_info(cfg, cfg.OUTPUT_DIR, BACKEND, record)
        trainer = build_trainer(cfg)
        if args.eval_only:
            if not args.model_dir and trainer.get_model_names():  # trainers with no models (zero-shot) need none
                raise ValueError(f"--eval-only needs --model-dir (the output folder of a training run) for trainer "
                                 f"{cfg.TRAINER.NAME}")
            logger.info(f"Evaluation record: {cfg.OUTPUT_DIR}")
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test()
            return 0
        if (cfg.TEST.FINAL_MODEL == "best_val" and not cfg.TEST.NO_TEST and not args.no_train
                and getattr(trainer, "val_loader", None) is None):
            raise ValueError(f"TEST.FINAL_MODEL is best_val but dataset {cfg.DATASET.NAME} has no validation split; "
                             "use TEST.FINAL_MODEL last_step.")
        if not args.no_train:
            trainer.train()
        return 0
    finally:
        if lock is not None:
            lock.release()


def user_message(exc: BaseException) -> str:
    """The message of a user error; for one raised in a DataLoader worker, the worker's own last line."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if "Original Traceback" in message:  # torch re-raises worker errors with the worker's traceback inside
        last = [ln for ln in message.strip().splitlines() if ln.strip()][-1].strip()
        message = re.sub(r"^[A-Za-z_][\w.]*(Error|Exception|Warning)?: ", "", last)
    return message


def main(argv: list[str] | None = None) -> int:
    """Parse, run, and turn user mistakes into one clear message with a non-zero exit code."""
    from plpp.engine.distributed import cleanup_distributed

    args = get_parser().parse_args(argv)
    try:
        return run(args)
    except USER_ERRORS as exc:
        if os.environ.get("PLPP_DEBUG"):
            raise
        message = user_message(exc)
        print(f"error: {message}", file=sys.stderr)
        for handler in logging.getLogger("plpp").handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(logging.makeLogRecord({"msg": f"error: {message}", "levelno": logging.ERROR}))
        return 2
    finally:
        cleanup_distributed()
