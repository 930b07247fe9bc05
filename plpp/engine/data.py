"""Datasets and loaders with Dassl's semantics: ``Datum``, ``DatasetBase``, transforms, ``DataManager``."""

from __future__ import annotations

import math
import os.path as osp
import random
from collections import defaultdict
from collections.abc import Sequence

import torch
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .distributed import ShardSampler, get_rank, get_world_size, is_dist, main_process_first, shared_random_seed
from .registry import DATASET_REGISTRY, unknown_name_message
from .utils import logger, read_image


class DataCheckError(ValueError):
    """Labels that cannot give a right answer (a class without training images, ...); names class and split."""


def check_class_coverage(train_x: Sequence, val: Sequence | None = None, test: Sequence | None = None,
                         name: str = "dataset") -> None:
    """Refuse labelled lists on which a run would fail or be silently wrong, naming the class and the split.

    Every label ``0 .. N-1`` (N = largest label + 1, Dassl's rule) needs training images, val and test
    labels must all be training labels, and each label must carry one class name everywhere.
    """
    if not train_x:
        raise DataCheckError(f"{name}: the training split has no images. Check DATASET.ROOT and the split "
                             "file (python -m plpp.datasets.check --root ROOT lists every problem).")
    splits = {"train": train_x, "val": val or [], "test": test or []}
    counts: dict[str, dict[int, int]] = {key: defaultdict(int) for key in splits}
    names: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for key, items in splits.items():
        for item in items:
            counts[key][item.label] += 1
            names[item.label][item.classname].add(key)
    problems = []
    for label in sorted(names):
        if len(names[label]) > 1:
            shown = "; ".join(f"'{n}' in {'/'.join(sorted(where))}" for n, where in sorted(names[label].items()))
            problems.append(f"label {label} has {len(names[label])} class names ({shown})")
    for label in range(max(names) + 1):
        if counts["train"].get(label):
            continue
        found = [f"{counts[k][label]} in {k}" for k in ("val", "test") if counts[k].get(label)]
        cname = next(iter(names[label]), None) if label in names else None
        what = f"class {label}" + (f" ('{cname}')" if cname else "")
        problems.append(f"{what} has no training images" + (f" ({', '.join(found)})" if found
                                                               else " and no images in any split"))
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise DataCheckError(
            f"{name}: {shown}. Labels must be 0..N-1, each class with training images and one name; check the "
            "split file and DATASET.ROOT (python -m plpp.datasets.check --root ROOT lists every problem).")


class Datum:
    """One labelled image: path, label, domain and class name. Read-only; the file must exist."""

    __slots__ = ("_impath", "_label", "_domain", "_classname")

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        if not isinstance(impath, str):
            raise TypeError(f"Datum.impath must be a str, got {type(impath).__name__}")
        if not osp.isfile(impath):
            raise FileNotFoundError(
                f"Image listed in the dataset split is missing: {impath}. "
                "Check DATASET.ROOT and the dataset layout (docs/DATASETS.md)."
            )
        self._impath = impath
        self._label = int(label)
        self._domain = int(domain)
        self._classname = classname

    impath = property(lambda self: self._impath)
    label = property(lambda self: self._label)
    domain = property(lambda self: self._domain)
    classname = property(lambda self: self._classname)

    def __repr__(self) -> str:
        return f"Datum({self._impath!r}, label={self._label}, classname={self._classname!r})"


class DatasetBase:
    """A dataset as lists of :class:`Datum`: ``train_x``, optional ``train_u``/``val``, and ``test``."""

    dataset_dir = ""
    domains: list[str] = []

    def __init__(self, train_x=None, train_u=None, val=None, test=None) -> None:
        check_class_coverage(train_x, val, test, type(self).__name__)
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    train_x = property(lambda self: self._train_x)
    train_u = property(lambda self: self._train_u)
    val = property(lambda self: self._val)
    test = property(lambda self: self._test)
    lab2cname = property(lambda self: self._lab2cname)
    classnames = property(lambda self: self._classnames)
    num_classes = property(lambda self: self._num_classes)

    @staticmethod
    def get_num_classes(data_source: Sequence[Datum]) -> int:
        """Largest label + 1 (Dassl's rule)."""
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source: Sequence[Datum]) -> tuple[dict[int, str], list[str]]:
        """Label → class name, and the names sorted by label."""
        container = {(item.label, item.classname) for item in data_source}
        mapping = {label: name for label, name in container}
        labels = sorted(mapping)
        return mapping, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains, target_domains) -> None:
        for domain in list(source_domains) + list(target_domains):
            if domain not in self.domains:
                raise ValueError(f"Input domain must belong to {self.domains}, but got [{domain}]")

    def generate_fewshot_dataset(self, *data_sources, num_shots: int = -1, repeat: bool = False):
        """K images per label, picked with Python's global ``random`` exactly as Dassl does.

        Labels are visited in order of first appearance; each calls ``random.sample(items, K)``
        (all items when fewer than K, or ``random.choices`` with ``repeat``).
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources
        logger.info(f"Creating a {num_shots}-shot dataset")
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            for _, items in tracker.items():
                if len(items) >= num_shots:
                    sampled = random.sample(items, num_shots)
                else:
                    sampled = random.choices(items, k=num_shots) if repeat else items
                dataset.extend(sampled)
            output.append(dataset)
        return output[0] if len(output) == 1 else output

    @staticmethod
    def split_dataset_by_label(data_source: Sequence[Datum]) -> dict[int, list[Datum]]:
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    @staticmethod
    def split_dataset_by_domain(data_source: Sequence[Datum]) -> dict[int, list[Datum]]:
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output

    @staticmethod
    def subsample_classes(*args, subsample: str = "all"):
        """Keep the base (first ceil(n/2) sorted labels) or new (the rest) classes, relabelled from 0."""
        return subsample_classes(*args, subsample=subsample)


def subsample_classes(*lists: Sequence, subsample: str = "all", datum_cls: type = Datum) -> tuple[list, ...]:
    """Base-to-new selection on ``lists`` (train, [val,] test), labels taken from the first list.

    ``base`` keeps the first ceil(n/2) sorted labels, ``new`` the rest; both are relabelled from 0 and
    rebuilt as ``datum_cls`` (so another engine's record class can be kept). ``all`` is a no-op.
    """
    if subsample not in ("all", "base", "new"):
        raise ValueError(f"DATASET.SUBSAMPLE_CLASSES must be all, base or new; got '{subsample}'")
    if subsample == "all":
        return tuple(lists)
    labels = sorted({item.label for item in lists[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    logger.info(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    return tuple(
        [datum_cls(impath=item.impath, label=relabeler[item.label], domain=item.domain, classname=item.classname)
         for item in items if item.label in relabeler]
        for items in lists
    )


_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
SUPPORTED_TRANSFORMS = ("random_flip", "random_resized_crop", "normalize", "random_crop", "center_crop",
                        "colorjitter", "randomgrayscale", "gaussian_blur")


def build_transform(cfg, is_train: bool = True, choices: Sequence[str] | None = None):
    """The train or test transform of ``INPUT.*`` (Dassl's order and defaults)."""
    if cfg.INPUT.NO_TRANSFORM:
        return None
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    unknown = [c for c in choices if c not in SUPPORTED_TRANSFORMS]
    if unknown:
        raise ValueError(f"INPUT.TRANSFORMS {unknown} are not supported by the built-in engine; "
                         f"supported: {', '.join(SUPPORTED_TRANSFORMS)}")
    if cfg.INPUT.INTERPOLATION not in _INTERPOLATION:
        raise ValueError(f"INPUT.INTERPOLATION '{cfg.INPUT.INTERPOLATION}' is not one of {list(_INTERPOLATION)}")
    interp = _INTERPOLATION[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if not is_train:
        tfm = [T.Resize(max(size), interpolation=interp), T.CenterCrop(size), T.ToTensor()]
        if "normalize" in choices:
            tfm.append(normalize)
        return T.Compose(tfm)
    tfm = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        tfm.append(T.Resize(size, interpolation=interp))
    if "random_crop" in choices:
        tfm.append(T.RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
    if "random_resized_crop" in choices:
        tfm.append(T.RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE), interpolation=interp))
    if "random_flip" in choices:
        tfm.append(T.RandomHorizontalFlip())
    if "center_crop" in choices:
        tfm.append(T.CenterCrop(size))
    if "colorjitter" in choices:
        tfm.append(T.ColorJitter(brightness=cfg.INPUT.COLORJITTER_B, contrast=cfg.INPUT.COLORJITTER_C,
                                 saturation=cfg.INPUT.COLORJITTER_S, hue=cfg.INPUT.COLORJITTER_H))
    if "randomgrayscale" in choices:
        tfm.append(T.RandomGrayscale(p=cfg.INPUT.RGS_P))
    if "gaussian_blur" in choices:
        tfm.append(T.RandomApply([T.GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
    tfm.append(T.ToTensor())
    if "normalize" in choices:
        tfm.append(normalize)
    return T.Compose(tfm)


class DatasetWrapper(Dataset):
    """Reads and transforms one :class:`Datum` into Dassl's batch dict."""

    def __init__(self, cfg, data_source, transform=None, is_train: bool = False) -> None:
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        to_tensor = [T.ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = T.Compose(to_tensor)

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> dict:
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = read_image(item.impath)
        if self.transform is None:
            output["img"] = self.to_tensor(img0)
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                key = "img" if i == 0 else f"img{i + 1}"
                output[key] = self._transform_image(tfm, img0)
        else:
            output["img"] = self._transform_image(self.transform, img0)
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _transform_image(self, tfm, img0):
        imgs = [tfm(img0) for _ in range(self.k_tfm)]
        return imgs[0] if len(imgs) == 1 else imgs


def build_data_loader(cfg, data_source, batch_size: int, tfm=None, is_train: bool = True,
                      dataset_wrapper=None, sampler_type: str | None = None) -> DataLoader:
    """A loader over ``data_source``: random order for training, sequential for testing.

    In a single process the loader uses the global RNGs exactly as Dassl's does, so the same seed gives
    the same batches on either engine: each pass draws one number from the global torch generator for
    the workers' base seed and (training) one for the ``RandomSampler`` permutation, and the transforms
    draw from the global generator (``NUM_WORKERS 0``) or from workers seeded by torch from that base
    seed. No generator of its own, no reseeding: checkpoints carry the RNG states, and restoring them
    makes a resumed run repeat the uninterrupted run's batches.

    In a multi-process run the training set is split over ranks (``DistributedSampler``) and
    ``batch_size`` is the global batch, divided evenly between ranks; the loader then has its own
    generator, seeded per rank and epoch by ``TrainerX.before_epoch``, so each rank's workers augment
    differently. An evaluation set is split into contiguous blocks without padding (``ShardSampler``),
    each rank taking batches of ``batch_size`` from its block; the evaluator gathers the predictions
    in rank order.
    """
    wrapper = (dataset_wrapper or DatasetWrapper)(cfg, data_source, transform=tfm, is_train=is_train)
    world = get_world_size()
    generator = None
    if is_train and sampler_type not in (None, "RandomSampler"):
        raise ValueError(f"Sampler '{sampler_type}' is not supported by the built-in engine; use RandomSampler")
    if is_train and is_dist():
        if batch_size % world:
            raise ValueError(f"DATALOADER.TRAIN_X.BATCH_SIZE={batch_size} must be divisible by the number "
                             f"of processes ({world})")
        batch_size //= world
        seed = cfg.SEED if cfg.SEED >= 0 else shared_random_seed()  # the same permutation on every rank
        sampler = DistributedSampler(wrapper, num_replicas=world, rank=get_rank(), shuffle=True, seed=seed,
                                     drop_last=True)
        generator = torch.Generator()
        generator.manual_seed(seed + (get_rank() << 48))
    elif is_train:
        sampler = RandomSampler(wrapper)  # draws its permutation from the global generator, as in Dassl
    elif is_dist():
        sampler = ShardSampler(wrapper)
    else:
        sampler = SequentialSampler(wrapper)
    return DataLoader(
        wrapper, batch_size=batch_size, sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(data_source) >= batch_size * world,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA, generator=generator,
        persistent_workers=False,
    )


def first_per_class(items: Sequence[Datum], n: int) -> list[Datum]:
    """The first ``n`` items of each label in list order (all when ``n <= 0``): a fixed, quick test subset."""
    if n <= 0:
        return list(items)
    seen: dict[int, int] = defaultdict(int)
    out = []
    for item in items:
        if seen[item.label] < n:
            seen[item.label] += 1
            out.append(item)
    logger.info(f"Evaluating on the first {n} test images per class (DATASET.TEST_PER_CLASS): {len(out):,} images")
    return out


def build_dataset(cfg) -> DatasetBase:
    name = cfg.DATASET.NAME
    if name not in DATASET_REGISTRY:
        raise ValueError(unknown_name_message("dataset (DATASET.NAME)", name, DATASET_REGISTRY.registered_names()))
    logger.info(f"Loading dataset: {name}")
    return DATASET_REGISTRY.get(name)(cfg)


class DataManager:
    """Builds the dataset, its transforms and loaders, and prints a summary table."""

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None) -> None:
        with main_process_first():  # rank 0 writes images/few-shot caches once; the others then read them
            dataset = build_dataset(cfg)
        tfm_train = custom_tfm_train if custom_tfm_train is not None else build_transform(cfg, is_train=True)
        tfm_test = custom_tfm_test if custom_tfm_test is not None else build_transform(cfg, is_train=False)
        bs_train = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        self.train_loader_x = build_data_loader(cfg, dataset.train_x, bs_train, tfm=tfm_train, is_train=True,
                                                dataset_wrapper=dataset_wrapper,
                                                sampler_type=cfg.DATALOADER.TRAIN_X.SAMPLER)
        self.train_loader_u = None
        if dataset.train_u:
            self.train_loader_u = build_data_loader(cfg, dataset.train_u, cfg.DATALOADER.TRAIN_U.BATCH_SIZE,
                                                    tfm=tfm_train, is_train=True, dataset_wrapper=dataset_wrapper)
        bs_test = cfg.DATALOADER.TEST.BATCH_SIZE
        test_items = first_per_class(dataset.test, cfg.DATASET.TEST_PER_CLASS)
        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(cfg, dataset.val, bs_test, tfm=tfm_test, is_train=False,
                                                dataset_wrapper=dataset_wrapper)
        self.test_loader = build_data_loader(cfg, test_items, bs_test, tfm=tfm_test, is_train=False,
                                             dataset_wrapper=dataset_wrapper)
        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)
        self._warn_dropped(len(dataset.train_x), bs_train)

    num_classes = property(lambda self: self._num_classes)
    num_source_domains = property(lambda self: self._num_source_domains)
    lab2cname = property(lambda self: self._lab2cname)

    @staticmethod
    def _warn_dropped(n_train: int, batch_size: int) -> None:
        left = n_train % batch_size if n_train >= batch_size else 0
        if left:
            logger.info(f"Note: the last incomplete batch is dropped each epoch ({left} of {n_train} training "
                        f"images, a different random subset every epoch), as in Dassl.")

    def show_dataset_summary(self, cfg) -> None:
        ds = self.dataset
        rows = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            rows.append(["Source", cfg.DATASET.SOURCE_DOMAINS])
        if cfg.DATASET.TARGET_DOMAINS:
            rows.append(["Target", cfg.DATASET.TARGET_DOMAINS])
        rows.append(["# classes", f"{self.num_classes:,}"])
        rows.append(["# train_x", f"{len(ds.train_x):,}"])
        if ds.train_u:
            rows.append(["# train_u", f"{len(ds.train_u):,}"])
        if ds.val:
            rows.append(["# val", f"{len(ds.val):,}"])
        rows.append(["# test", f"{len(self.test_loader.dataset):,}"])
        logger.info(tabulate(rows))
