"""Dataset folder names, display names and the dataset lists of each evaluation protocol.

Run directories are named after the dataset config basenames (``configs/datasets/<name>.yaml``), so
every table and JSON file keys datasets by those folder names; display names are only used when a
table is rendered, in the order the papers print them.
"""

from __future__ import annotations

#: Folder name -> name printed in tables, in the order of the CoOp/CoCoOp/MaPLe papers.
DISPLAY_NAMES: dict[str, str] = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "-V2",
    "imagenet_sketch": "-Sketch",
    "imagenet_a": "-A",
    "imagenet_r": "-R",
}

#: The 11 datasets of the few-shot and base-to-new benchmarks.
BENCHMARK_DATASETS: tuple[str, ...] = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)

#: Source dataset of the cross-dataset and domain-generalisation protocols.
SOURCE_DATASET = "imagenet"

#: The 10 cross-dataset targets (the benchmark datasets without ImageNet).
XD_TARGETS: tuple[str, ...] = tuple(d for d in BENCHMARK_DATASETS if d != SOURCE_DATASET)

#: The 4 ImageNet variants of the domain-generalisation protocol.
DG_TARGETS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")

#: ``DATASET.NAME`` (what ``results.json`` records) -> folder name (the ``configs/datasets`` basename).
DATASET_FOLDERS: dict[str, str] = {
    "ImageNet": "imagenet",
    "Caltech101": "caltech101",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers",
    "Food101": "food101",
    "FGVCAircraft": "fgvc_aircraft",
    "SUN397": "sun397",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "UCF101": "ucf101",
    "ImageNetV2": "imagenetv2",
    "ImageNetSketch": "imagenet_sketch",
    "ImageNetA": "imagenet_a",
    "ImageNetR": "imagenet_r",
    "FashionMNIST": "fashion_mnist",
}


def _squash(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def dataset_matches_folder(dataset_name: str, folder: str) -> bool | None:
    """Whether a ``DATASET.NAME`` belongs in a dataset folder: ``True``/``False`` when either is known
    (or the two spell the same words, as ``ProxyWorld`` and ``proxy_world``), ``None`` when it cannot
    be told (a dataset this package does not know)."""
    if dataset_name in DATASET_FOLDERS:
        return DATASET_FOLDERS[dataset_name] == folder
    if _squash(dataset_name) == _squash(folder):
        return True
    if folder in DATASET_FOLDERS.values():
        return False
    return None


def display_name(dataset: str) -> str:
    """Return the table name of a dataset folder; unknown folders are shown as they are."""
    return DISPLAY_NAMES.get(dataset, dataset)


def dataset_order(datasets: list[str] | set[str] | tuple[str, ...]) -> list[str]:
    """Sort dataset folder names in paper order, unknown names last in alphabetical order.

    Tables and JSON files list datasets in the same order as the published tables so that they can
    be compared row by row.
    """
    known = list(DISPLAY_NAMES)
    return sorted(set(datasets), key=lambda d: (known.index(d), "") if d in known else (len(known), d))
