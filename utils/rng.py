"""Random draws that do not depend on where they run.

:func:`seeded_draws` makes every global generator an augmentation may use (torch's CPU generator,
Python's ``random``, numpy's legacy ``np.random``) start from one seed for the duration of a block,
then puts all three back as they were. Transforms from torchvision draw on torch's generator, timm's
(RandAugment, RandomErasing, RandomResizedCropAndInterpolation) on ``random`` and ``np.random``;
with the per-sample seed of :func:`datasets.loader.view_seed`, a sample's view is then the same in
the main process and in any DataLoader worker, and the main process's own sequence (Mixup/CutMix,
dropout) is not shifted by how many samples it transformed itself.
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def seeded_draws(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, ``random`` and ``np.random`` with ``seed`` inside the block; restore them after.

    Only the CPU generator is seeded (``torch.default_generator.manual_seed``): the draws are those that
    follow ``torch.manual_seed(seed)``, without its lazy CUDA seeding, which on a CUDA build of torch
    costs ~100x more per call (a per-sample cost in every loader).
    """
    gen = torch.default_generator
    torch_state, py_state, np_state = gen.get_state(), random.getstate(), np.random.get_state()
    gen.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        gen.set_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)
