"""The training loop with Dassl's structure, hooks, log lines and checkpoint layout.

``TrainerX`` runs ``before_train → (before_epoch, run_epoch, after_epoch)* → after_train``; a method
subclass provides ``build_model``, ``forward_backward`` and, when needed, ``model_inference``.
Checkpoints of every registered model are written each epoch (atomically), so a killed run resumes
from its last finished epoch; numbered files are kept every ``TRAIN.CHECKPOINT_FREQ`` epochs and at
the end, as in Dassl.
"""

from __future__ import annotations

import datetime
import math
import os
import os.path as osp
import time
from collections import OrderedDict

import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import (
    BEST_FILE,
    FORMAT,
    NUMBERED,
    CheckpointError,
    CorruptCheckpointError,
    copy_file_atomic,
    extract_state_dict,
    load_checkpoint,
    load_state_dict_checked,
    numbered_checkpoints,
    require_fields,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import check_engine_cfg
from .data import DataManager
from .distributed import (
    all_reduce_gradients,
    average_over_ranks,
    barrier,
    broadcast_parameters,
    get_rank,
    is_main_process,
)
from .evaluator import build_evaluator
from .registry import TRAINER_REGISTRY, unknown_name_message
from .utils import AverageMeter, MetricMeter, logger, write_json, write_text_atomic


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the epoch, batch and term."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a multi-process run's per-rank loader generator in ``epoch``: fixed by seed and epoch."""
    return (seed + 1) * 1_000_003 + epoch


class CheckpointIO:
    """Save, load and resume the registered models with this project's safe checkpoint format.

    Works on any trainer that keeps Dassl's ``_models``, ``_optims`` and ``_scheds`` dicts, so it
    also replaces real Dassl's pickling I/O when that backend is used. Every epoch's checkpoint also
    holds the best validation score so far and its epoch, and ``model-best.pth.tar`` is a copy of the
    best epoch's checkpoint: a resumed run continues exactly where the killed one stood.
    """

    def checkpoint_meta(self) -> dict:
        cfg = self.cfg
        return {"format": FORMAT, "trainer": cfg.TRAINER.NAME, "backbone": cfg.MODEL.BACKBONE.NAME}

    def best_val_state(self) -> dict:
        """The best validation score seen so far and its epoch (``None`` before any validation)."""
        best = getattr(self, "best_result", -math.inf)
        return {"best_result": float(best) if math.isfinite(best) else None,
                "best_epoch": getattr(self, "best_epoch", None)}

    def save_model(self, epoch: int, directory: str, is_best: bool = False, val_result=None,
                   model_name: str = "") -> None:
        """Write ``<directory>/<name>/model.pth.tar-<epoch+1>`` (or ``model_name``) for each model."""
        if not is_main_process():
            return
        for name in self.get_model_names():
            state = {
                **self.checkpoint_meta(),
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "optimizer": self._optims[name].state_dict() if self._optims.get(name) else None,
                "scheduler": self._scheds[name].state_dict() if self._scheds.get(name) else None,
                "val_result": None if val_result is None else float(val_result),
                **self.best_val_state(),
                "rng": rng_state(),
            }
            fname = model_name or f"model.pth.tar-{epoch + 1}"
            if is_best:
                fname = BEST_FILE
            save_dir = osp.join(directory, name)
            save_checkpoint(state, osp.join(save_dir, fname))
            if not is_best:
                write_text_atomic(fname + "\n", osp.join(save_dir, "checkpoint"))

    def copy_to_best(self, epoch: int, directory: str) -> None:
        """Make ``model-best.pth.tar`` a copy of epoch ``epoch + 1``'s checkpoint, for each model."""
        if not is_main_process():
            return
        for name in self.get_model_names():
            save_dir = osp.join(directory, name)
            copy_file_atomic(osp.join(save_dir, f"model.pth.tar-{epoch + 1}"), osp.join(save_dir, BEST_FILE))

    def resume_model_if_exist(self, directory: str) -> int:
        """Restore every registered model, its optimizer, schedule, RNG and best score; return the start epoch.

        The file is the one named in ``<name>/checkpoint``; when that file was deleted, the newest
        complete ``model.pth.tar-<epoch>`` before it. A truncated file is an error that says which
        file to delete to resume from an earlier checkpoint, or how to start over.
        """
        names = self.get_model_names()
        pointers = [osp.isfile(osp.join(directory, n, "checkpoint")) for n in names]
        if not names or not any(pointers):
            return 0
        if not all(pointers):
            have = [n for n, p in zip(names, pointers) if p]
            raise CheckpointError(f"{directory} has checkpoints of {', '.join(have)} but not of every model of "
                                  f"{self.cfg.TRAINER.NAME} ({', '.join(names)}). Use another --output-dir.")
        logger.info("Found checkpoint at " + directory + " (will resume training)")
        epochs, best = {}, {}
        for name in names:
            fpath = self._resume_file(directory, name)
            state = self._load_for_resume(fpath, directory)
            fields = ["state_dict", "epoch"]
            fields += ["optimizer"] if self._optims.get(name) else []
            fields += ["scheduler"] if self._scheds.get(name) else []
            require_fields(state, fpath, fields, "resuming training")
            load_state_dict_checked(self._models[name], extract_state_dict(state, fpath), fpath)
            for part, target in (("optimizer", self._optims.get(name)), ("scheduler", self._scheds.get(name))):
                if target is not None and state[part] is not None:
                    try:
                        target.load_state_dict(state[part])
                    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                        raise CheckpointError(f"Checkpoint {fpath}: its {part} state does not fit this run's "
                                              f"{part} ({exc}). Use another --output-dir.") from None
            if state.get("rng") is not None:
                set_rng_state(state["rng"])  # the next epoch draws what it would have drawn without the restart
            else:
                logger.info(f"Note: {fpath} holds no RNG states; the resumed epochs will not repeat the batches "
                            "of an uninterrupted run")
            epochs[name] = int(state["epoch"])
            best[name] = (state.get("best_result"), state.get("best_epoch"))
            logger.info(f"Loaded {fpath} (epoch {epochs[name]})")
        if len(set(epochs.values())) > 1 or len(set(best.values())) > 1:
            raise CheckpointError(f"The checkpoints in {directory} are from different epochs ({epochs}); "
                                  "delete the folder (or use another --output-dir) to start over.")
        start_epoch = epochs[names[0]]
        score, best_epoch = best[names[0]]
        self.best_result = -math.inf if score is None else float(score)
        self.best_epoch = best_epoch
        self.evaluated_epoch = start_epoch
        self.evaluated_weights = None
        self._tidy_after_resume(directory, start_epoch)
        if best_epoch is not None:
            logger.info(f"Best validation result so far: {self.best_result:.4f} (epoch {best_epoch})")
        return start_epoch

    def _resume_file(self, directory: str, name: str) -> str:
        folder = osp.join(directory, name)
        pointer = osp.join(folder, "checkpoint")
        with open(pointer, encoding="utf-8") as f:
            fname = f.read().strip()
        if not fname or osp.basename(fname) != fname or fname in (".", ".."):
            raise CheckpointError(f"{pointer} names {fname!r}, not a checkpoint file in {folder}. Delete "
                                  f"{directory} (or use another --output-dir) to start over.")
        fpath = osp.join(folder, fname)
        if osp.isfile(fpath):
            return fpath
        match = NUMBERED.match(fname)
        limit = int(match.group(1)) if match else math.inf
        older = {e: p for e, p in numbered_checkpoints(folder).items() if e < limit}
        if older:
            fallback = older[max(older)]
            logger.info(f"{fpath} (named in {pointer}) does not exist; resuming from the newest complete checkpoint "
                        f"before it, {fallback}")
            return fallback
        raise CheckpointError(f"{pointer} names {fname}, which does not exist, and no earlier checkpoint is kept in "
                              f"{folder}. Delete {directory} (or use another --output-dir) to start this run over.")

    def _load_for_resume(self, fpath: str, directory: str) -> dict:
        try:
            return load_checkpoint(fpath)
        except CorruptCheckpointError as exc:
            match = NUMBERED.match(osp.basename(fpath))
            limit = int(match.group(1)) if match else math.inf
            older = sorted(((e, p) for e, p in numbered_checkpoints(osp.dirname(fpath)).items() if e < limit),
                           reverse=True)
            for epoch, path in older:
                try:
                    load_checkpoint(path)
                except CheckpointError:
                    continue
                advice = f"Delete it and rerun the same command: training resumes from {path} (epoch {epoch})."
                break
            else:
                advice = (f"No earlier checkpoint is kept (TRAIN.CHECKPOINT_FREQ {self.cfg.TRAIN.CHECKPOINT_FREQ}). "
                          f"Delete {directory} (or use another --output-dir) and rerun to start this run over.")
            raise CorruptCheckpointError(f"{exc} {advice}") from None

    def _tidy_after_resume(self, directory: str, start_epoch: int) -> None:
        """Make the folder what an uninterrupted run has after ``start_epoch`` epochs (main process only).

        A kill between steps of ``after_epoch`` can leave the previous epoch's checkpoint undeleted, or
        ``model-best.pth.tar`` not yet copied from the best epoch's checkpoint.
        """
        if not is_main_process():
            return
        best_epoch = getattr(self, "best_epoch", None)
        if osp.abspath(directory) != osp.abspath(self.output_dir):  # --resume from another folder
            for name in self.get_model_names():
                src = osp.join(directory, name, BEST_FILE)
                if best_epoch is not None and osp.isfile(src):
                    os.makedirs(osp.join(self.output_dir, name), exist_ok=True)
                    copy_file_atomic(src, osp.join(self.output_dir, name, BEST_FILE))
            return
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        for name in self.get_model_names():
            folder = osp.join(directory, name)
            for epoch, path in numbered_checkpoints(folder).items():
                if epoch < start_epoch and not (freq > 0 and epoch % freq == 0):
                    os.remove(path)
            best_path = osp.join(folder, BEST_FILE)
            if best_epoch == start_epoch and _checkpoint_epoch(best_path) != best_epoch:
                copy_file_atomic(osp.join(folder, f"model.pth.tar-{best_epoch}"), best_path)
                logger.info(f"Restored {best_path} from the checkpoint of epoch {best_epoch}")

    def checkpoint_folders(self, name: str) -> tuple[str, ...]:
        """Folders of a run that may hold model ``name``'s checkpoints, in the order they are tried.

        Hook: a trainer adds the folder another codebase saves the same model under (upstream MaPLe's
        ``MultiModalPromptLearner``), so ``--eval-only --model-dir <that run>`` finds it.
        """
        return (name,)

    def adapt_state_dict(self, name: str, state_dict: dict, source: str) -> dict:
        """Hook: map the tensors of a checkpoint being evaluated to model ``name``'s names (default: as they are).

        A trainer maps another codebase's names and drops what does not belong to the model there; the
        result is then loaded strictly.
        """
        return state_dict

    def _model_folder(self, directory: str, name: str) -> str:
        folders = [osp.join(directory, f) for f in self.checkpoint_folders(name)]
        found = [f for f in folders if osp.isdir(f)]
        if found and found[0] != folders[0]:
            logger.info(f"{folders[0]} does not exist; reading {name} from {found[0]}")
        return found[0] if found else folders[0]

    def load_model(self, directory: str, epoch: int | None = None, fallback_to_last: bool = True) -> None:
        """Load each model from ``model-best.pth.tar`` or ``model.pth.tar-<epoch>`` for evaluation.

        Without ``epoch`` and without a ``model-best.pth.tar`` the newest checkpoint (``checkpoint``
        pointer) is loaded when ``fallback_to_last``, with a log line saying so. The loaded epoch and
        files are kept for ``results.json``. Files written by Dassl-based codebases load too: their
        pickled objects are skipped, never built (``load_checkpoint(..., pickled_objects="skip")``), and
        their tensors go through ``adapt_state_dict`` before the strict load.
        """
        names = self.get_model_names()
        if not names:
            logger.info("Note that load_model() is skipped as no pretrained model is given")
            return
        fname = BEST_FILE if epoch is None else f"model.pth.tar-{epoch}"
        loaded, epochs = {}, set()
        for name in names:
            folder = self._model_folder(directory, name)
            fpath = osp.join(folder, fname)
            if epoch is None and not osp.exists(fpath) and fallback_to_last:
                pointer = osp.join(folder, "checkpoint")
                if osp.isfile(pointer):
                    with open(pointer, encoding="utf-8") as f:
                        fpath = osp.join(folder, osp.basename(f.read().strip()))
                    logger.info(f"{osp.join(folder, fname)} does not exist; loading the newest checkpoint, {fpath}")
            state = load_checkpoint(fpath, pickled_objects="skip")
            require_fields(state, fpath, ["state_dict", "epoch"], "evaluation (results.json records the epoch)")
            if not isinstance(state["epoch"], int) or isinstance(state["epoch"], bool):
                raise CheckpointError(f"Checkpoint {fpath}: its 'epoch' is {state['epoch']!r}, not a number of epochs")
            if state.get("backbone") and state["backbone"] != self.cfg.MODEL.BACKBONE.NAME:
                raise CheckpointError(
                    f"{fpath} was trained with backbone '{state['backbone']}' but MODEL.BACKBONE.NAME is "
                    f"'{self.cfg.MODEL.BACKBONE.NAME}'. Use the same backbone config for evaluation.")
            state_dict = self.adapt_state_dict(name, extract_state_dict(state, fpath), fpath)
            load_state_dict_checked(self._models[name], state_dict, fpath)
            logger.info(f'Loading weights to {name} from "{fpath}" (epoch = {state.get("epoch")})')
            loaded[name] = fpath
            epochs.add(state["epoch"])
        if len(epochs) > 1:
            raise CheckpointError(f"The checkpoints loaded from {directory} are from different epochs "
                                  f"({sorted(epochs)}); evaluate checkpoints of one epoch (--load-epoch).")
        self.evaluated_epoch = int(epochs.pop())
        self.evaluated_weights = loaded

    def evaluated_record(self) -> dict:
        """What ``results.json`` says about the evaluated weights: their epoch and the files they came from.

        ``epoch`` is the epoch of the evaluated weights (0: untrained); ``weights_from`` maps each model
        to the checkpoint file it was loaded from (relative to the output folder when inside it), or is
        ``null`` when the weights are those the run just trained.
        """
        files = getattr(self, "evaluated_weights", None)
        out = osp.abspath(self.output_dir)
        if files:
            files = {name: (osp.relpath(osp.abspath(p), out) if osp.abspath(p).startswith(out + os.sep)
                            else osp.abspath(p)) for name, p in files.items()}
        return {"epoch": int(getattr(self, "evaluated_epoch", 0)), "weights_from": files or None,
                "final_model": self.cfg.TEST.FINAL_MODEL if getattr(self, "trained_this_run", False) else None}


def _checkpoint_epoch(fpath: str) -> int | None:
    """The epoch stored in a checkpoint, or None when the file is missing or unreadable."""
    try:
        return int(load_checkpoint(fpath).get("epoch"))
    except (CheckpointError, TypeError, ValueError):
        return None


class TrainerBase(CheckpointIO):
    """Registered models, optimizers and schedulers, and the generic epoch loop."""

    def __init__(self) -> None:
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._optims: OrderedDict = OrderedDict()
        self._scheds: OrderedDict = OrderedDict()
        self._writer = None
        self.scaler = None  # a torch.amp.GradScaler when mixed precision needs one

    def register_model(self, name: str = "model", model: nn.Module | None = None, optim=None, sched=None) -> None:
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if name in self._models:
            raise KeyError(f"A model named '{name}' is already registered")
        if model is None:
            raise ValueError("register_model needs a model")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None) -> list[str]:
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in names_real:
                raise KeyError(unknown_name_message("model name", name, names_real))
        return names

    def set_model_mode(self, mode: str = "train", names=None) -> None:
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss: torch.Tensor, terms: dict | None = None) -> None:
        """Stop with a clear error when the loss (or one of ``terms``) is NaN or infinite."""
        if torch.isfinite(loss).all():
            return
        bad = ""
        if terms:
            named = {k: (v.item() if isinstance(v, torch.Tensor) else float(v)) for k, v in terms.items()}
            first = [k for k, v in named.items() if not math.isfinite(v)]
            shown = ", ".join(f"{k}={v:.4g}" for k, v in named.items())
            bad = f" Non-finite term: {first[0] if first else 'total'} ({shown})."
        epoch = getattr(self, "epoch", 0) + 1
        batch = getattr(self, "batch_idx", 0) + 1
        raise NonFiniteLossError(
            f"Loss is infinite or NaN at epoch {epoch}/{getattr(self, 'max_epoch', '?')}, batch "
            f"{batch}/{getattr(self, 'num_batches', '?')}.{bad} Nothing was saved for this epoch; lower "
            "OPTIM.LR or the loss weights, or use PREC fp32.")

    def init_writer(self, log_dir: str) -> None:
        if self._writer is None and is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag: str, scalar_value, global_step=None) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    def train(self, start_epoch: int, max_epoch: int) -> None:
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for epoch in range(self.start_epoch, self.max_epoch):
            self.epoch = epoch
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def run_epoch(self) -> None:
        raise NotImplementedError

    def test(self, split=None):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch) -> dict:
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError

    def model_zero_grad(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor, terms: dict | None = None) -> None:
        self.detect_anomaly(loss, terms)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def model_update(self, names=None) -> None:
        names = self.get_model_names(names)
        params = [p for n in names if self._optims[n] is not None
                  for g in self._optims[n].param_groups for p in g["params"]]
        all_reduce_gradients(params)
        self.before_optimizer_step(params)
        for name in names:
            optim = self._optims[name]
            if optim is None:
                continue
            if self.scaler is not None:
                self.scaler.step(optim)
            else:
                optim.step()
        if self.scaler is not None:
            self.scaler.update()

    def before_optimizer_step(self, params: list[torch.Tensor]) -> None:
        """Hook: adjust the gradients of ``params`` (averaged over ranks, still scaled under amp) before the step."""

    def model_backward_and_update(self, loss: torch.Tensor, names=None, terms: dict | None = None) -> None:
        """Zero the gradients, check the loss, backpropagate and step (one path for every precision)."""
        self.model_zero_grad(names)
        self.model_backward(loss, terms)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    """A trainer with data, evaluator, resume, tensorboard and the final test."""

    def __init__(self, cfg) -> None:
        super().__init__()
        check_engine_cfg(cfg)
        self.check_cfg(cfg)
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.USE_CUDA else "cpu")
        if self.device.type == "cuda" and "LOCAL_RANK" in os.environ:
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.trained_this_run = False
        self.build_data_loader()
        self.build_model()
        broadcast_parameters(p for m in self._models.values() for p in m.parameters())  # DDP: rank 0's init
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -float("inf")
        self.best_epoch: int | None = None  # epoch (1-based) of the best validation result
        self.evaluated_epoch = 0  # epoch of the weights the model holds now (0: untrained)
        self.evaluated_weights: dict[str, str] | None = None  # checkpoint files they were loaded from

    def check_cfg(self, cfg) -> None:
        """Hook to validate method-specific keys before anything is built."""

    def build_data_loader(self) -> None:
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self) -> None:
        raise NotImplementedError("A trainer must implement build_model() and register its models")

    def train(self) -> None:  # type: ignore[override]
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self) -> None:
        directory = self.cfg.RESUME or self.cfg.OUTPUT_DIR
        self.start_epoch = self.resume_model_if_exist(directory)
        self.init_writer(osp.join(self.output_dir, "tensorboard"))
        self.time_start = time.time()

    def after_epoch(self) -> None:
        """Validate (for ``best_val``), checkpoint this epoch, copy it to ``model-best`` when it is the best.

        The order keeps every kill point resumable: the epoch's checkpoint (holding the best score so
        far) is complete before the pointer names it, and ``model-best`` is copied from it afterwards.
        """
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        curr, is_best = None, False
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr = self.test(split="val")
            is_best = curr > self.best_result
            if is_best:
                self.best_result = curr
                self.best_epoch = self.epoch + 1
        self.save_model(self.epoch, self.output_dir, val_result=curr)
        if is_best:
            self.copy_to_best(self.epoch, self.output_dir)
        self.evaluated_epoch = self.epoch + 1
        self.evaluated_weights = None
        if self.epoch > 0 and is_main_process():
            self._drop_previous_checkpoint(keep=freq > 0 and self.epoch % freq == 0)

    def _drop_previous_checkpoint(self, keep: bool) -> None:
        """Remove the previous epoch's file unless it is a ``CHECKPOINT_FREQ`` milestone."""
        if keep:
            return
        for name in self.get_model_names():
            prev = osp.join(self.output_dir, name, f"model.pth.tar-{self.epoch}")
            if osp.exists(prev):
                os.remove(prev)

    def after_train(self) -> None:
        self.trained_this_run = True
        logger.info("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val" and getattr(self, "best_epoch", None) is not None:
                logger.info(f"Deploy the model with the best val performance (epoch {self.best_epoch})")
                barrier()  # DDP: rank 0 has written model-best before any rank reads it
                self.load_model(self.output_dir, fallback_to_last=False)
            elif self.cfg.TEST.FINAL_MODEL == "best_val":
                logger.info("No epoch was trained, so there is no best val model: deploy the initial model")
            else:
                logger.info("Deploy the last-epoch model")
            self.test()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        logger.info(f"Elapsed: {elapsed}")
        self.close_writer()

    @torch.no_grad()
    def test(self, split: str | None = None) -> float:
        """Evaluate on ``split`` (default ``TEST.SPLIT``) and return the accuracy."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split == "val":
            if self.val_loader is None:
                raise ValueError("TEST.SPLIT is 'val' (or FINAL_MODEL is 'best_val') but this dataset has no "
                                 "validation split; use TEST.SPLIT test and TEST.FINAL_MODEL last_step.")
            loader = self.val_loader
        else:
            split = "test"
            loader = self.test_loader
        logger.info(f"Evaluate on the *{split}* set")
        self.before_test(split)
        for batch in tqdm(loader, desc=f"eval {split}", disable=not is_main_process(), leave=False):
            inputs, label = self.parse_batch_test(batch)
            output = self.model_inference(inputs)
            self.evaluator.process(output, label)
        self.evaluator.gather()
        results = self.evaluator.evaluate()
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        if split == "test" and is_main_process():
            self.write_results_json(results)
        return list(results.values())[0]

    def before_test(self, split: str) -> None:
        """Hook run once before a test loop (e.g. to cache text features)."""

    def results_metadata(self) -> dict:
        """Extra ``results.json`` fields from the method (e.g. which backbone file produced the numbers);
        the engine knows nothing of models, so the default is none."""
        return {}

    def write_results_json(self, results: dict) -> None:
        """Write ``results.json`` beside ``log.txt`` so tools never need to parse the log."""
        cfg = self.cfg
        total, correct = self.evaluator.counts
        record = {
            "format": "plpp-results/1",
            "trainer": cfg.TRAINER.NAME,
            "dataset": cfg.DATASET.NAME,
            "backbone": cfg.MODEL.BACKBONE.NAME,
            "seed": cfg.SEED,
            "num_shots": cfg.DATASET.NUM_SHOTS,
            "subsample_classes": cfg.DATASET.SUBSAMPLE_CLASSES,
            "split": "test",
            "eval_only": not self.trained_this_run,
            **self.evaluated_record(),
            "total": total,
            "correct": correct,
            "accuracy": results["accuracy"],
            "error": results["error_rate"],
            "macro_f1": results["macro_f1"],
        }
        for key, value in getattr(self, "results_metadata", dict)().items():  # Dassl's trainer may lack the hook
            record.setdefault(key, value)
        write_json(record, osp.join(self.output_dir, "results.json"))

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, input):
        return self.model(input)

    def get_current_lr(self, names=None) -> float:
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """A trainer for labelled data: one pass over ``train_loader_x`` per epoch."""

    def before_epoch(self) -> None:
        """Multi-process runs only: a new split of the data over ranks, and per-rank worker seeds, each epoch.

        A single-process run does nothing here, as Dassl does: its loader draws from the global RNGs
        (see :func:`plpp.engine.data.build_data_loader`), which are seeded once by ``train.py`` and
        restored from the checkpoint on resume, never reseeded per epoch.
        """
        loader = self.train_loader_x
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(self.epoch)
        if loader.generator is not None and self.cfg.SEED >= 0:
            loader.generator.manual_seed(epoch_seed(self.cfg.SEED, self.epoch) + (get_rank() << 48))

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        if self.num_batches == 0:
            raise ValueError("The training loader is empty: the training split has no images.")
        end = time.time()
        for batch_idx, batch in enumerate(self.train_loader_x):
            self.batch_idx = batch_idx
            data_time.update(time.time() - end)
            loss_summary = average_over_ranks(self.forward_backward(batch))  # DDP: the global batch's values
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            meet_freq = (self.batch_idx + 1) % self.cfg.TRAIN.PRINT_FREQ == 0
            only_few_batches = self.num_batches < self.cfg.TRAIN.PRINT_FREQ
            if meet_freq or only_few_batches:
                nb_remain = self.num_batches - self.batch_idx - 1
                nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
                logger.info(" ".join([
                    f"epoch [{self.epoch + 1}/{self.max_epoch}]",
                    f"batch [{self.batch_idx + 1}/{self.num_batches}]",
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
                    f"data {data_time.val:.3f} ({data_time.avg:.3f})",
                    f"{losses}",
                    f"lr {self.get_current_lr():.4e}",
                    f"eta {eta}",
                ]))
            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)


def build_trainer(cfg):
    """Instantiate the trainer registered as ``TRAINER.NAME``."""
    name = cfg.TRAINER.NAME
    if name not in TRAINER_REGISTRY:
        raise ValueError(unknown_name_message("trainer (--trainer / TRAINER.NAME)", name,
                                              TRAINER_REGISTRY.registered_names()))
    logger.info(f"Loading trainer: {name}")
    return TRAINER_REGISTRY.get(name)(cfg)
