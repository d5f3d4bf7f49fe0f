"""Random draws that do not depend on where they run.

:func:`seeded_draws` makes every global generator an augmentation may use (torch's CPU generator,
Python's ``random``, numpy's legacy ``np.random``) start from one seed for the duration of a block,
then puts all three back as they were. Transforms from torchvision draw on torch's generator, timm's
(RandAugment, RandomErasing, RandomResizedCropAndInterpolation) on ``random`` and ``np.random``;
with the per-sample seed of :func:`datasets.loader.view_seed`, a sample's view is then the same in
the main process and in any DataLoader worker, and the main process's own sequence (Mixup/CutMix,
dropout) is not shifted by how many samples it transformed itself. A transform made only of ops
that draw on torch (:func:`draws_on_torch_only`: torchvision's) skips the ``random`` / ``np.random``
part, the costly one; its views are the same either way.
"""
from __future__ import annotations

import contextlib
import random
import weakref
from typing import Any, Iterator

import numpy as np
import torch


@contextlib.contextmanager
def seeded_draws(seed: int, python_rngs: bool = True) -> Iterator[None]:
    """Seed torch's CPU generator, ``random`` and ``np.random`` with ``seed`` inside the block; restore them after.

    Only the CPU generator is seeded (``torch.default_generator.manual_seed``): the draws are those that
    follow ``torch.manual_seed(seed)``, without its lazy CUDA seeding, which on a CUDA build of torch
    costs ~100x more per call (a per-sample cost in every loader). ``python_rngs=False`` leaves
    ``random`` and ``np.random`` alone, for code that draws on torch only (:func:`draws_on_torch_only`):
    seeding and restoring them costs 25x the torch part (``tools/benchmark.py --loader-vs-decode``).
    """
    gen = torch.default_generator
    torch_state = gen.get_state()
    py_states = (random.getstate(), np.random.get_state()) if python_rngs else None
    gen.manual_seed(seed)
    if py_states:
        random.seed(seed)
        np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        gen.set_state(torch_state)
        if py_states:
            random.setstate(py_states[0])
            np.random.set_state(py_states[1])


#: torchvision v1 containers that draw on Python's ``random`` (v2's own draw on torch)
_V1_PYTHON_RNG = {"RandomChoice", "RandomOrder"}
_torch_only_memo: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def _op_torch_only(op: Any) -> bool:
    marked = getattr(op, "draws_on_torch_only", None)  # a project transform declares it
    if isinstance(marked, bool):
        return marked
    module, name = type(op).__module__, type(op).__name__
    if module.startswith("torchvision.transforms.v2"):
        return name != "Lambda"
    if module.startswith("torchvision.transforms"):
        return name not in _V1_PYTHON_RNG and name != "Lambda"
    return False  # timm, albumentations, user code: assume they use random / np.random


def draws_on_torch_only(transform: Any) -> bool:
    """True when every op of ``transform`` (containers walked through ``.transforms``) is known to draw
    only on torch's generator: torchvision's v2 ops, its v1 ops except ``RandomChoice`` /
    ``RandomOrder``, ops marked ``draws_on_torch_only = True``; anything else (timm's RandAugment, a
    ``Lambda``) counts as drawing on ``random`` / ``np.random`` too. Remembered per transform object."""
    try:
        return _torch_only_memo[transform]
    except (KeyError, TypeError):
        pass
    stack, ok = [transform], True
    while stack and ok:
        op = stack.pop()
        ok = _op_torch_only(op)
        children = getattr(op, "transforms", None)
        if isinstance(children, (list, tuple)):
            stack.extend(children)
    try:
        _torch_only_memo[transform] = ok
    except TypeError:  # not weak-referenceable: computed each time
        pass
    return ok
