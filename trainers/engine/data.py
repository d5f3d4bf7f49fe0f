"""Data side of the engine: every trainer's data settings are read here, once.

* :func:`loader_options_from_cfg` turns ``DATALOADER.*`` and ``SEED`` (plus the process's rank,
  world size and device) into :class:`LoaderOptions`, the one place loader options are assembled;
* :func:`build_data_bundle` builds the :class:`DataBundle` a trainer receives as ``self.data``:
  the dataset (task, class names, ...), the transforms, and the train/val/test loaders made by a
  loader factory (:func:`image_loaders` for images; trainers with other data pass their own, e.g.
  dialogue batches or pre-training views) from those options;
* :func:`build_data_and_loaders` is the engine's default: ``build_dataset`` + ``build_transform``
  + image loaders, then the decoded-image cache (:func:`use_decoded_cache`).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

from utils.errors import ConfigError
from datasets import build_data_loader, build_dataset, build_transform

logger = logging.getLogger(__name__)

DECODED_CACHE_MODES = ("auto", "memory", "gpu", "disk", "off")


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """Loader settings of one process, as plain values (see :func:`loader_options_from_cfg`)."""

    num_workers: int = 0
    seed: int = 0  # SEED, or 0 when SEED < 0
    distributed: bool = False
    rank: int = 0
    world_size: int = 1
    pin_memory: bool = False  # DATALOADER.PIN_MEMORY and a CUDA device
    prefetch_factor: int = 2
    train_batch_size: int = 1
    test_batch_size: int = 1
    train_sampler: str = "RandomSampler"
    decoded_cache: str = "off"
    decoded_cache_dir: str = ""
    decoded_cache_max_gb: float = 0.0

    def common(self) -> Dict[str, Any]:
        """The keyword arguments every loader builder takes (``build_data_loader``, ``build_dialogue_loader``)."""
        return dict(num_workers=self.num_workers, seed=self.seed, distributed=self.distributed, rank=self.rank,
                    world_size=self.world_size, pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor)


def loader_options_from_cfg(cfg: Any, *, rank: int, world_size: int, device: Any) -> LoaderOptions:
    """The one place ``DATALOADER.*`` (and ``SEED``) become loader options."""
    d = cfg.DATALOADER
    mode = str(d.DECODED_CACHE).lower()
    if mode not in DECODED_CACHE_MODES:
        raise ConfigError(f"DATALOADER.DECODED_CACHE must be auto, memory, gpu, disk or off, got {mode!r}")
    return LoaderOptions(
        num_workers=int(d.NUM_WORKERS), seed=max(int(cfg.SEED), 0), distributed=world_size > 1, rank=rank,
        world_size=world_size, pin_memory=bool(d.PIN_MEMORY) and device.type == "cuda",
        prefetch_factor=int(d.PREFETCH_FACTOR), train_batch_size=int(d.TRAIN_X.BATCH_SIZE),
        test_batch_size=int(d.TEST.BATCH_SIZE), train_sampler=str(d.TRAIN_X.SAMPLER), decoded_cache=mode,
        decoded_cache_dir=str(d.DECODED_CACHE_DIR), decoded_cache_max_gb=float(d.DECODED_CACHE_MAX_GB),
    )


#: ``make_loader(items, is_train, options, transform)`` -> a loader over ``items``
LoaderFactory = Callable[[Sequence[Any], bool, LoaderOptions, Optional[Callable]], Any]


@dataclasses.dataclass
class DataBundle:
    """What a trainer receives as ``self.data``: the dataset and its loaders.

    ``task``, ``classnames``, ``num_classes`` and ``lab2cname`` are the dataset's; the loaders may
    be replaced after the build (decoded-image cache, cached CLIP features, mixed training items).
    """

    dataset: Any
    options: LoaderOptions
    train_loader: Any
    val_loader: Any = None
    test_loader: Any = None
    tfm_train: Optional[Callable] = None
    tfm_test: Optional[Callable] = None

    @property
    def task(self) -> str:
        return self.dataset.task

    @property
    def classnames(self) -> List[str]:
        return self.dataset.classnames

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self.dataset.lab2cname

    @property
    def has_val(self) -> bool:
        return self.val_loader is not None


def build_data_bundle(
    cfg: Any, dataset: Any, make_loader: LoaderFactory, *, rank: int, world_size: int, device: Any,
    tfm_train: Optional[Callable] = None, tfm_test: Optional[Callable] = None,
    splits: Optional[Sequence[Sequence[Any]]] = None, test_optional: bool = False,
) -> DataBundle:
    """The data a trainer receives: loaders over ``splits`` (train, val, test; default the dataset's)
    made by ``make_loader`` with the options of :func:`loader_options_from_cfg`.

    An empty val split gets no loader; an empty test split gets none only with ``test_optional``
    (otherwise the loader builder refuses it).
    """
    options = loader_options_from_cfg(cfg, rank=rank, world_size=world_size, device=device)
    train, val, test = splits if splits is not None else (dataset.train_x, dataset.val, dataset.test)
    return DataBundle(
        dataset=dataset, options=options, tfm_train=tfm_train, tfm_test=tfm_test,
        train_loader=make_loader(train, True, options, tfm_train),
        val_loader=make_loader(val, False, options, tfm_test) if len(val) > 0 else None,
        test_loader=None if test_optional and len(test) == 0 else make_loader(test, False, options, tfm_test),
    )


def image_loaders(num_classes: int, train_drop_last: Optional[bool] = None) -> LoaderFactory:
    """A loader factory of dict image batches (:func:`datasets.build_data_loader`)."""

    def make(items: Sequence[Any], is_train: bool, o: LoaderOptions, transform: Optional[Callable]):
        if is_train:
            return build_data_loader(list(items), transform, o.train_batch_size, is_train=True, num_classes=num_classes,
                                     sampler=o.train_sampler, drop_last=train_drop_last, **o.common())
        return build_data_loader(list(items), transform, o.test_batch_size, is_train=False, num_classes=num_classes,
                                 **o.common())

    return make


def build_data_and_loaders(t) -> None:
    """The engine's data: set ``t.data`` (dataset, transforms, image loaders), then the decoded-image cache."""
    cfg = t.cfg
    dm = build_dataset(cfg)
    if dm.task not in t.TASK_TARGETS:
        raise ConfigError(f"trainer {type(t).__name__} does not support task {dm.task!r}")
    t.data = DataBundle(dm, LoaderOptions(), None)  # required_targets() may read the task
    dm.require(t.required_targets())
    t.data = build_data_bundle(
        cfg, dm, image_loaders(dm.num_classes), rank=t.rank, world_size=t.world_size, device=t.device,
        tfm_train=build_transform(cfg, is_train=True), tfm_test=build_transform(cfg, is_train=False),
    )
    use_decoded_cache(t)


def use_decoded_cache(t) -> None:
    """Swap the PIL loaders of ``t.data`` for :class:`DecodedImageLoader` per ``DATALOADER.DECODED_CACHE``.

    The decoded loaders run the same transforms (``tfm_train`` / ``tfm_test``) with the same
    per-sample seeds as the PIL loaders, on images decoded at their original size, so switching
    the cache on or off (or moving to a GPU) does not change the training data.
    """
    from datasets.decoded_cache import DecodedImageLoader, decode_all, decoded_bytes, describe

    data = t.data
    o = data.options
    mode = o.decoded_cache
    if mode == "off" or (mode == "auto" and t.device.type != "cuda"):
        return
    splits = [("train_loader", data.dataset.train_x, data.tfm_train), ("val_loader", data.dataset.val, data.tfm_test),
              ("test_loader", data.dataset.test, data.tfm_test)]
    splits = [(attr, items, tfm) for attr, items, tfm in splits if getattr(data, attr) is not None]
    if mode == "auto":
        gb = sum(decoded_bytes(items) for _, items, _ in splits) / 2**30
        if gb >= o.decoded_cache_max_gb:
            logger.info(f"decoded-image cache off: {gb:.1f} GB of decoded images exceed DECODED_CACHE_MAX_GB")
            return
        mode = "gpu"
    cache_dir = o.decoded_cache_dir if mode == "disk" else ""
    decoded = []
    for attr, items, tfm in splits:
        loader = getattr(data, attr)
        images = decode_all(items, cache_dir)
        decoded.append(images)
        setattr(data, attr, DecodedImageLoader(
            images, items, data.num_classes, tfm, loader.batch_size, loader.sampler, loader.drop_last, t.device,
            seed=o.seed, on_device=mode == "gpu"))
    logger.info(f"decoded-image cache ({mode}): {describe(decoded)} decoded once at full size, "
                f"transformed on {t.device} with the PIL loader's transforms and seeds")


class DataAccess:
    """Read-only views of ``self.data`` on the trainer, for the many call sites that read them
    (``self.num_classes``, ``self.classnames``, ``self.train_loader``, ...)."""

    data: DataBundle

    dataset = property(lambda self: self.data.dataset)
    task = property(lambda self: self.data.task)
    classnames = property(lambda self: self.data.classnames)
    num_classes = property(lambda self: self.data.num_classes)
    lab2cname = property(lambda self: self.data.lab2cname)
    tfm_train = property(lambda self: self.data.tfm_train)
    tfm_test = property(lambda self: self.data.tfm_test)
    train_loader = property(lambda self: self.data.train_loader)
    val_loader = property(lambda self: self.data.val_loader)
    test_loader = property(lambda self: self.data.test_loader)
    has_val = property(lambda self: self.data.has_val)
