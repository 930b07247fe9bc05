"""The built-in engine's training batches come from the global RNGs exactly as Dassl's do.

Dassl's ``build_data_loader`` is a ``DataLoader`` over its ``DatasetWrapper`` with a plain
``RandomSampler`` and no generator of its own: the permutation, the workers' base seed and (with
``NUM_WORKERS 0``) every augmentation draw come from the global torch generator, which ``train.py``
seeds once. The reference below is that construction in plain torch; the same comparison against
real Dassl, end to end, is ``tests/test_dassl_backend.py::test_same_seed_same_batches_on_both_engines``.
Resume relies on this: checkpoints carry the RNG states instead of reseeding each epoch.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from plpp.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from plpp.engine.config import get_cfg_default
from plpp.engine.data import DatasetWrapper, Datum, build_data_loader, build_transform


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[Datum]:
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for i in range(6):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, size=(40, 40, 3)).astype(np.uint8)).save(path)
        out.append(Datum(impath=str(path), label=i % 3, classname=f"c{i % 3}"))
    return out


def small_cfg(workers: int):
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (16, 16)
    cfg.INPUT.TRANSFORMS = ["random_resized_crop", "random_flip", "normalize"]
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.SEED = 3
    return cfg


def two_epochs(loader) -> list[tuple[list[int], torch.Tensor]]:
    return [(batch["index"].tolist(), batch["img"]) for _ in range(2) for batch in loader]


@pytest.mark.parametrize("workers", [0, 1])
def test_train_loader_draws_from_the_global_generator_as_dassls_does(items, workers):
    cfg = small_cfg(workers)
    tfm = build_transform(cfg, is_train=True)
    torch.manual_seed(11)
    ours = two_epochs(build_data_loader(cfg, items, batch_size=2, tfm=tfm, is_train=True))
    after_ours = torch.get_rng_state()

    torch.manual_seed(11)
    wrapper = DatasetWrapper(cfg, items, transform=tfm, is_train=True)
    reference = two_epochs(DataLoader(wrapper, batch_size=2, sampler=RandomSampler(wrapper), num_workers=workers,
                                      drop_last=True))
    assert [i for i, _ in ours] == [i for i, _ in reference]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(ours, reference))
    assert torch.equal(after_ours, torch.get_rng_state())  # nothing drawn besides what Dassl's loader draws
    first, second = [sum((i for i, _ in ours[k : k + 3]), []) for k in (0, 3)]
    assert sorted(first) == sorted(second) == list(range(6)) and first != second  # not reseeded per epoch


def test_a_test_loader_is_sequential_and_draws_like_dassls(items):
    cfg = small_cfg(0)
    torch.manual_seed(5)
    loader = build_data_loader(cfg, items, batch_size=4, tfm=build_transform(cfg, is_train=False), is_train=False)
    assert [b["index"].tolist() for b in loader] == [[0, 1, 2, 3], [4, 5]]
    drawn = torch.get_rng_state()
    torch.manual_seed(5)
    torch.empty((), dtype=torch.int64).random_()  # DataLoader's base seed for its workers: one draw per pass
    assert torch.equal(drawn, torch.get_rng_state())


def test_rng_states_survive_a_checkpoint_and_repeat_the_next_draws(tmp_path: Path):
    """What resume does: the states saved after an epoch, loaded with ``weights_only``, give the same draws."""
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.rand(3), np.random.rand(3), random.random()  # an epoch's worth of drawing
    save_checkpoint({"rng": rng_state()}, str(tmp_path / "ckpt"))
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(str(tmp_path / "ckpt"))["rng"])
    again = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]
