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
    FORMAT,
    CheckpointError,
    extract_state_dict,
    load_checkpoint,
    load_state_dict_checked,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
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
    also replaces real Dassl's pickling I/O when that backend is used.
    """

    def checkpoint_meta(self) -> dict:
        cfg = self.cfg
        return {"format": FORMAT, "trainer": cfg.TRAINER.NAME, "backbone": cfg.MODEL.BACKBONE.NAME}

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
                "rng": rng_state(),
            }
            fname = model_name or f"model.pth.tar-{epoch + 1}"
            if is_best:
                fname = "model-best.pth.tar"
            save_dir = osp.join(directory, name)
            save_checkpoint(state, osp.join(save_dir, fname))
            if not is_best:
                write_text_atomic(fname + "\n", osp.join(save_dir, "checkpoint"))

    def resume_model_if_exist(self, directory: str) -> int:
        """Restore every registered model from the file named in ``<name>/checkpoint``; return the start epoch."""
        names = self.get_model_names()
        if not names or not all(osp.isfile(osp.join(directory, n, "checkpoint")) for n in names):
            return 0
        logger.info("Found checkpoint at " + directory + " (will resume training)")
        start_epoch = 0
        for name in names:
            path = osp.join(directory, name)
            with open(osp.join(path, "checkpoint"), encoding="utf-8") as f:
                fname = f.read().strip()
            fpath = osp.join(path, fname)
            state = load_checkpoint(fpath)
            load_state_dict_checked(self._models[name], extract_state_dict(state, fpath), fpath)
            if self._optims.get(name) and state.get("optimizer") is not None:
                self._optims[name].load_state_dict(state["optimizer"])
            if self._scheds.get(name) and state.get("scheduler") is not None:
                self._scheds[name].load_state_dict(state["scheduler"])
            if state.get("rng") is not None:
                set_rng_state(state["rng"])  # the next epoch draws what it would have drawn without the restart
            else:
                logger.info(f"Note: {fpath} holds no RNG states; the resumed epochs will not repeat the batches "
                            "of an uninterrupted run")
            start_epoch = int(state["epoch"])
            logger.info(f"Loaded {fpath} (epoch {start_epoch})")
        return start_epoch

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """Load each model from ``model-best.pth.tar`` or ``model.pth.tar-<epoch>`` for evaluation."""
        names = self.get_model_names()
        if not names:
            logger.info("Note that load_model() is skipped as no pretrained model is given")
            return
        fname = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in names:
            fpath = osp.join(directory, name, fname)
            if epoch is None and not osp.exists(fpath):
                pointer = osp.join(directory, name, "checkpoint")
                if osp.isfile(pointer):
                    with open(pointer, encoding="utf-8") as f:
                        fpath = osp.join(directory, name, f.read().strip())
            state = load_checkpoint(fpath)
            if state.get("backbone") and state["backbone"] != self.cfg.MODEL.BACKBONE.NAME:
                raise CheckpointError(
                    f"{fpath} was trained with backbone '{state['backbone']}' but MODEL.BACKBONE.NAME is "
                    f"'{self.cfg.MODEL.BACKBONE.NAME}'. Use the same backbone config for evaluation.")
            load_state_dict_checked(self._models[name], extract_state_dict(state, fpath), fpath)
            logger.info(f'Loading weights to {name} from "{fpath}" (epoch = {state.get("epoch")})')


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
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr = self.test(split="val")
            if curr > self.best_result:
                self.best_result = curr
                self.save_model(self.epoch, self.output_dir, val_result=curr, is_best=True)
        self.save_model(self.epoch, self.output_dir)
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
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                logger.info("Deploy the model with the best val performance")
                barrier()  # DDP: rank 0 has written model-best before any rank reads it
                self.load_model(self.output_dir)
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
            "epoch": self.epoch + 1 if self.trained_this_run else None,
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
