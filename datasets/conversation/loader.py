"""Data loaders over dialogues: one batch = B dialogues padded to the longest (L utterances).

A batch is a dict:

* ``text`` [B, L, Dt], ``audio`` [B, L, Da], ``visual`` [B, L, Dv] float features (padding: 0);
* ``speaker`` [B, L] long (padding: 0), ``mask`` [B, L] bool (True = a real utterance);
* ``label_padded`` [B, L] long class indices, -1 at padding;
* ``label`` [N] and ``index`` [N] long: the N real utterances' labels and their indices in the
  split (0 .. utterances-1, dialogue by dialogue), in row-major order of ``mask``, so that
  ``logits[mask]`` lines up with them. The engine's ``evaluate`` reads exactly these two, and
  counts every utterance once;
* ``dialogue`` [B] long (position of the dialogue in the split) and ``vid`` list of ids.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from utils.errors import ConfigError, DatasetError

from datasets.conversation.format import MODALITIES, Dialogue
from datasets.loader import EpochSampler, ShardSampler, seeded_data_loader


class DialogueDataset(Dataset):
    """Item i = dialogue i with the split-wide index of its first utterance."""

    def __init__(self, dialogues: Sequence[Dialogue]) -> None:
        self.dialogues = list(dialogues)
        lengths = [len(d) for d in self.dialogues]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lengths else np.zeros(0, np.int64)
        self.num_utterances = int(sum(lengths))

    def __len__(self) -> int:
        return len(self.dialogues)

    def __getitem__(self, key: Any) -> Dict[str, Any]:
        i = key[0] if isinstance(key, tuple) else key  # EpochSampler yields (index, epoch) keys
        return {"position": i, "dialogue": self.dialogues[i], "offset": int(self.offsets[i])}


def collate_dialogues(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Pad a list of :class:`DialogueDataset` items into one batch (module docstring)."""
    dialogues: List[Dialogue] = [it["dialogue"] for it in items]
    B, L = len(dialogues), max(len(d) for d in dialogues)
    out: Dict[str, Any] = {}
    for m in MODALITIES:
        dim = getattr(dialogues[0], m).shape[1]
        x = np.zeros((B, L, dim), dtype=np.float32)
        for b, d in enumerate(dialogues):
            x[b, : len(d)] = getattr(d, m)
        out[m] = torch.from_numpy(x)
    speaker = np.zeros((B, L), dtype=np.int64)
    label = np.full((B, L), -1, dtype=np.int64)
    index = np.full((B, L), -1, dtype=np.int64)
    for b, (it, d) in enumerate(zip(items, dialogues)):
        n = len(d)
        speaker[b, :n] = d.speakers
        label[b, :n] = d.labels
        index[b, :n] = it["offset"] + np.arange(n)
    mask = torch.from_numpy(index >= 0)
    out["speaker"] = torch.from_numpy(speaker)
    out["mask"] = mask
    out["label_padded"] = torch.from_numpy(label)
    out["label"] = out["label_padded"][mask]
    out["index"] = torch.from_numpy(index)[mask]
    out["dialogue"] = torch.tensor([it["position"] for it in items], dtype=torch.long)
    out["vid"] = [d.vid for d in dialogues]
    return out


def build_dialogue_loader(
    dialogues: Sequence[Dialogue],
    batch_size: int,
    *,
    is_train: bool,
    seed: int = 0,
    shuffle: bool = True,
    num_workers: int = 0,
    distributed: bool = False,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader:
    """A DataLoader of dialogue batches.

    Train: :class:`~datasets.loader.EpochSampler` (seeded order per epoch, call ``set_epoch``;
    shuffled unless ``shuffle`` is False), no dropped batches. Evaluation:
    :class:`~datasets.loader.ShardSampler` (each dialogue once across ranks).
    ``batch_size`` counts dialogues.
    """
    if not dialogues:
        raise DatasetError("cannot build a data loader over an empty split")
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    if not distributed:
        rank, world_size = 0, 1
    n = len(dialogues)
    sampler = (
        EpochSampler(n, seed=seed, shuffle=shuffle, rank=rank, world_size=world_size) if is_train
        else ShardSampler(n, rank=rank, world_size=world_size)
    )
    return seeded_data_loader(
        DialogueDataset(dialogues), sampler, batch_size, seed=seed, rank=rank, num_workers=num_workers,
        drop_last=False, pin_memory=pin_memory, prefetch_factor=prefetch_factor, collate_fn=collate_dialogues,
    )
