"""GloVe / word2vec initialisation of a text prompt's context vectors (EmoCoOp).

The context words (``CTX_INIT``, lower-cased, punctuation stripped) are looked up in a
gensim ``KeyedVectors`` and mapped to the CLIP token width by a fixed projection ``W``
[ctx_dim, dim] drawn Xavier-uniform from a seeded generator (no bias): ``ctx_i = W v_i``.
A word without a vector, or a context position without a word, gets ``N(0, 0.02^2)``
in the token space. Nothing is downloaded: the vectors come from a local file.

Sources (``GLOVE_MODEL``): a ``.kv`` file (``KeyedVectors.save``), a word2vec binary ``.bin``,
or a text file in word2vec format (first line ``<count> <dim>``) or GloVe format (no header),
optionally gzipped. A name without a path (``glove-wiki-gigaword-300``) is looked up where
gensim's downloader keeps its data: ``$GENSIM_DATA_DIR`` or ``~/gensim-data``, as
``<dir>/<name>/<name>.gz``.
"""
from __future__ import annotations

import gzip
import logging
import math
import os
import string
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from configs.errors import ConfigError
from configs.fileio import REPO_ROOT

logger = logging.getLogger(__name__)
VECTOR_SUFFIXES = (".kv", ".bin", ".txt", ".vec", ".gz", ".w2v", ".model")


def gensim_data_dir() -> str:
    """Where gensim's downloader stores models (``$GENSIM_DATA_DIR`` or ``~/gensim-data``)."""
    return os.environ.get("GENSIM_DATA_DIR") or os.path.join(os.path.expanduser("~"), "gensim-data")


def resolve_vectors_path(source: str, key: str = "TRAINER.EMOCOOP.GLOVE_MODEL", switch: str = "") -> str:
    """The local file for ``source`` (a path, a path relative to the repository, or a gensim name).

    Raises:
        ConfigError: one line naming ``key`` and ``source`` when no local file is found.
    """
    if not source:
        raise ConfigError(f"{key} is empty: set it to a local .kv, word2vec or GloVe text file")
    expanded = os.path.expanduser(source)
    for cand in (expanded, os.path.join(REPO_ROOT, expanded)):
        if os.path.isfile(cand):
            return cand
    looks_like_path = os.sep in source or "/" in source or source.lower().endswith(VECTOR_SUFFIXES)
    off = f", or set {switch} False" if switch else ""
    if looks_like_path:
        raise ConfigError(f"{key} {source!r}: file not found")
    folder = os.path.join(gensim_data_dir(), source)
    for name in (f"{source}.gz", f"{source}.kv", f"{source}.txt", f"{source}.model"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise ConfigError(
        f"{key} {source!r} names a gensim-downloader model, but there is no local copy in {folder} and nothing is "
        f"downloaded: set {key} to a local .kv, word2vec or GloVe text file (or put the model there){off}"
    )


def _first_line(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.readline()


def load_word_vectors(path: str, key: str = "TRAINER.EMOCOOP.GLOVE_MODEL"):
    """A gensim ``KeyedVectors`` from a ``.kv``/``.model`` file, word2vec binary or word2vec/GloVe text."""
    from gensim.models import KeyedVectors

    try:
        if path.endswith((".kv", ".model")):
            return KeyedVectors.load(path)
        if path.endswith(".bin"):
            return KeyedVectors.load_word2vec_format(path, binary=True)
        head = _first_line(path).split()
        has_header = len(head) == 2 and all(t.isdigit() for t in head)
        return KeyedVectors.load_word2vec_format(path, binary=False, no_header=not has_header)
    except (OSError, ValueError, EOFError, UnicodeDecodeError, AttributeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}: cannot read word vectors from {path}: {first}") from None


def context_words(text: str) -> List[str]:
    """Lower-cased words of ``text`` without surrounding punctuation (``"The photo,"`` -> ``["the", "photo"]``)."""
    words = [w.strip(string.punctuation).lower() for w in text.split()]
    return [w for w in words if w]


def xavier_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """The fixed projection ``W`` [out_dim, in_dim], Xavier-uniform from ``torch.Generator`` seeded ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    bound = math.sqrt(6.0 / (in_dim + out_dim))
    return (torch.rand(out_dim, in_dim, generator=g) * 2 - 1) * bound


def glove_context(
    words: Sequence[str], vectors: Mapping, n_ctx: int, ctx_dim: int, seed: int, std: float = 0.02,
    dim: Optional[int] = None,
) -> Tuple[torch.Tensor, List[str]]:
    """Context vectors [n_ctx, ctx_dim] from word vectors, and the words that had none.

    Args:
        words: context words (the first ``n_ctx`` are used).
        vectors: word -> vector (a gensim ``KeyedVectors`` or a dict of arrays).
        n_ctx: number of context vectors.
        ctx_dim: CLIP token width.
        seed: seeds the projection, then the random rows (in order of position).
        std: std of the random rows.
        dim: vector width (default: ``vectors.vector_size``).
    """
    if dim is None:
        dim = int(getattr(vectors, "vector_size", 0)) or len(next(iter(vectors.values())))
    proj = xavier_projection(dim, ctx_dim, seed)
    g = torch.Generator().manual_seed(int(seed) + 1)
    rows, missing = [], []
    for i in range(n_ctx):
        word = words[i] if i < len(words) else None
        if word is not None and word in vectors:
            vec = torch.from_numpy(np.array(vectors[word], dtype=np.float32))
            rows.append(proj @ vec)
        else:
            if word is not None:
                missing.append(word)
            rows.append(torch.randn(ctx_dim, generator=g) * std)
    if len(words) > n_ctx:
        logger.warning(f"{len(words)} context words for {n_ctx} context vectors: using the first {n_ctx}")
    return torch.stack(rows), missing
