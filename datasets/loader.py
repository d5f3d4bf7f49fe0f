"""Data loaders whose batches are dicts (see the data contract in docs/DESIGN.md).

A batch holds ``img`` FloatTensor[B,3,H,W], ``index`` LongTensor[B] (position in the data
source), ``impath`` list[str], and every target the data has: ``label`` LongTensor[B],
``labels`` FloatTensor[B,C] multi-hot, ``dist`` FloatTensor[B,C], ``va`` FloatTensor[B,2].
"""
from __future__ import annotations

import logging
import math
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.rng import draws_on_torch_only, seeded_draws
from utils.errors import ConfigError, DatasetError
from utils.registry import closest

from .base import Datum
from .decode import read_image, read_image_tensor, takes_tensors  # noqa: F401  (read_image: re-exported)

logger = logging.getLogger(__name__)

SAMPLERS = ("RandomSampler", "SequentialSampler")


def target_keys(data: Sequence[Datum]) -> List[str]:
    """The target keys a loader over ``data`` emits.

    ``label`` / ``labels`` when any datum has one (missing: -1 / all zeros); ``dist`` / ``va``
    when any datum has one, in which case all must (DatasetError naming the first without).
    """
    keys = []
    if any(d.label >= 0 for d in data):
        keys.append("label")
    if any(d.labels for d in data):
        keys.append("labels")
    for key in ("dist", "va"):
        have = [getattr(d, key) is not None for d in data]
        if any(have):
            if not all(have):
                bad = data[have.index(False)].impath
                raise DatasetError(f"{bad} has no {key} although other items of the split have one")
            keys.append(key)
    return keys


def view_seed(seed: int, epoch: int, idx: int) -> int:
    """The RNG seed of sample ``idx``'s augmentation in ``epoch`` (a pure function, any worker)."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + idx


def apply_transform(transform: Optional[Callable], img: Any, seed: Optional[int] = None) -> torch.Tensor:
    """``transform(img)`` for a PIL image or a uint8 tensor [3, H, W] (any device); with ``seed``,
    its random draws come from torch's CPU generator, ``random`` and ``np.random`` seeded ``seed``
    (all restored afterwards: :func:`utils.rng.seeded_draws`; the torch draws are those after
    ``torch.manual_seed(seed)``), so an augmented view is reproducible, the same for both inputs and
    for any number of DataLoader workers."""
    if transform is None:
        if isinstance(img, torch.Tensor):
            return img.float() / 255.0
        return torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    if seed is None:
        out = transform(img)
    else:
        # torchvision draws on torch's CPU generator, timm on random / np.random (seeded only when needed)
        with seeded_draws(seed, python_rngs=not draws_on_torch_only(transform)):
            out = transform(img)
    return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out


def stack_targets(data: Sequence[Datum], num_classes: int) -> Dict[str, torch.Tensor]:
    """The targets the image loader would emit for ``data``, as [N, ...] tensors."""
    keys = target_keys(data)
    out: Dict[str, torch.Tensor] = {}
    if "label" in keys:
        out["label"] = torch.tensor([d.label for d in data], dtype=torch.long)
    if "labels" in keys:
        m = torch.zeros(len(data), num_classes)
        for i, d in enumerate(data):
            if d.labels:
                m[i, list(d.labels)] = 1.0
        out["labels"] = m
    if "dist" in keys:
        out["dist"] = torch.tensor([list(d.dist) for d in data], dtype=torch.float32)
    if "va" in keys:
        out["va"] = torch.tensor([list(d.va) for d in data], dtype=torch.float32)
    return out


class DatasetWrapper(Dataset):
    """Reads and transforms ``data_source[i]`` into a dict of tensors (one sample, no batch dim).

    A key ``(i, epoch)`` (what :class:`EpochSampler` yields) seeds the augmentation with
    :func:`view_seed`, so the view of a sample depends only on (seed, epoch, i) — not on the
    worker that loads it, nor on whether the run was resumed.
    """

    def __init__(self, data_source: Sequence[Datum], transform: Optional[Callable], num_classes: int, seed: int = 0) -> None:
        self.data_source = list(data_source)
        self.transform = transform
        self.num_classes = num_classes
        self.seed = seed
        self.keys = target_keys(self.data_source)
        self.tensor_input = takes_tensors(transform)  # decode JPEGs to tensors (datasets/decode.py)

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, key: Any) -> Dict[str, Any]:
        idx, epoch = key if isinstance(key, tuple) else (key, None)
        d = self.data_source[idx]
        img = read_image_tensor(d.impath) if self.tensor_input else read_image(d.impath)
        out: Dict[str, Any] = {
            "img": apply_transform(self.transform, img, None if epoch is None else view_seed(self.seed, epoch, idx)),
            "index": idx,
            "impath": d.impath,
        }
        if "label" in self.keys:
            out["label"] = d.label
        if "labels" in self.keys:
            multi_hot = torch.zeros(self.num_classes, dtype=torch.float32)
            if d.labels:
                multi_hot[list(d.labels)] = 1.0
            out["labels"] = multi_hot
        if "dist" in self.keys:
            out["dist"] = torch.tensor(d.dist, dtype=torch.float32)
        if "va" in self.keys:
            out["va"] = torch.tensor(d.va, dtype=torch.float32)
        return out


class EpochSampler(Sampler):
    """Training order that is a pure function of (seed, epoch), sharded across ranks.

    The permutation is ``torch.randperm(n)`` with a generator seeded ``seed + epoch`` (or
    ``range(n)`` when ``shuffle`` is False); it is padded by repeating its start to a multiple of
    ``world_size`` (like DistributedSampler) and rank r takes positions r::world_size. It yields
    ``(index, epoch)`` keys so :class:`DatasetWrapper` can seed each sample's augmentation.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.n, self.seed, self.shuffle, self.rank, self.world_size = n, seed, shuffle, rank, world_size
        self.epoch = 0
        self.num_samples = math.ceil(n / world_size) if n else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> List[int]:
        """This rank's indices for the current epoch."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.num_samples * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[Any]:
        return iter([(i, self.epoch) for i in self.order()])

    def __len__(self) -> int:
        return self.num_samples


class ShardSampler(Sampler):
    """Sequential evaluation order; rank r gets r::world_size, no padding (each item once overall)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.indices = list(range(rank, n, world_size))

    def set_epoch(self, epoch: int) -> None:  # same interface as EpochSampler
        pass

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _worker_init(worker_id: int) -> None:
    """Seed numpy and random in each worker from torch's per-worker seed (itself deterministic)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def seeded_data_loader(
    dataset: Dataset, sampler: Sampler, batch_size: int, *, seed: int, rank: int, num_workers: int,
    drop_last: bool, pin_memory: bool, prefetch_factor: int = 2, collate_fn: Optional[Callable] = None,
) -> DataLoader:
    """A DataLoader whose workers are seeded from (``seed``, ``rank``) and persist across epochs."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1000 + rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=generator,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )


def build_data_loader(
    data_source: List[Datum],
    transform: Optional[Callable],
    batch_size: int,
    *,
    is_train: bool,
    num_classes: int,
    num_workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    rank: int = 0,
    world_size: int = 1,
    drop_last: Optional[bool] = None,
    pin_memory: bool = False,
    sampler: str = "",
    prefetch_factor: int = 2,
) -> DataLoader:
    """A DataLoader over ``data_source`` yielding dict batches (module docstring).

    Train: :class:`EpochSampler` (call ``loader.sampler.set_epoch(epoch)``), shuffled unless
    ``sampler`` is "SequentialSampler"; ``drop_last`` defaults to True when the per-rank
    length exceeds ``batch_size``. Test: :class:`ShardSampler` (sequential; rank r gets
    r::world_size when distributed, no padding), never drops. Workers are seeded from ``seed``
    and ``rank``; they persist across epochs when ``num_workers`` > 0.
    """
    if not data_source:
        raise DatasetError("cannot build a data loader over an empty split")
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    sampler = sampler or ("RandomSampler" if is_train else "SequentialSampler")
    if sampler not in SAMPLERS:
        hint = closest(sampler, list(SAMPLERS))
        raise ConfigError(f"unknown sampler {sampler!r}" + (f" (did you mean {hint!r}?)" if hint else f" (known: {SAMPLERS})"))
    if not distributed:
        rank, world_size = 0, 1
    n = len(data_source)
    if is_train:
        smp: Sampler = EpochSampler(n, seed=seed, shuffle=sampler == "RandomSampler", rank=rank, world_size=world_size)
        if drop_last is None:
            drop_last = len(smp) > batch_size
    else:
        smp = ShardSampler(n, rank=rank, world_size=world_size)
        if drop_last:
            logger.warning("drop_last ignored for evaluation: every sample is evaluated once")
        drop_last = False
    return seeded_data_loader(
        DatasetWrapper(data_source, transform, num_classes, seed=seed), smp, batch_size, seed=seed, rank=rank,
        num_workers=num_workers, drop_last=drop_last, pin_memory=pin_memory, prefetch_factor=prefetch_factor,
    )
