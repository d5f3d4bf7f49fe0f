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

from utils.errors import ConfigError
from utils.fileio import REPO_ROOT

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


class _SavedKeyedVectors:
    """Stands in for gensim's KeyedVectors while unpickling: plain attributes, no code of its own."""


#: the gensim classes a ``.kv`` / ``.model`` pickle may name; each becomes a :class:`_SavedKeyedVectors`
_GENSIM_CLASSES = {
    ("gensim.models.keyedvectors", "KeyedVectors"),
    ("gensim.models.keyedvectors", "Word2VecKeyedVectors"),
    ("gensim.models.keyedvectors", "Vocab"),
    ("gensim.models.keyedvectors", "CompatVocab"),
}


def _restricted_unpickler():
    """A :class:`~utils.safe_unpickle.SafeUnpickler` (containers, scalars, numpy arrays)
    that also accepts gensim's KeyedVectors classes, as inert attribute holders."""
    import pickle

    from utils.safe_unpickle import SafeUnpickler

    class KeyedVectorsUnpickler(SafeUnpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in _GENSIM_CLASSES:
                return _SavedKeyedVectors
            if module == "copyreg" and name == "_reconstructor":
                import copyreg

                def reconstructor(cls, base, state):  # only gensim's classes over object (no list(range(N)))
                    if cls is not _SavedKeyedVectors or base is not object:
                        raise pickle.UnpicklingError("copyreg._reconstructor may only rebuild gensim KeyedVectors")
                    return copyreg._reconstructor(cls, base, state)

                return reconstructor
            if module == "builtins" and name == "object":
                return object
            try:
                return super().find_class(module, name)
            except pickle.UnpicklingError:
                raise pickle.UnpicklingError(
                    f"forbidden global {module}.{name} (a word-vector file holds only gensim KeyedVectors, "
                    "containers and numpy arrays)") from None

    return KeyedVectorsUnpickler


def load_saved_keyed_vectors(path: str):
    """Word vectors from a gensim ``KeyedVectors.save`` file, read WITHOUT running pickled code.

    The pickle may name only gensim's KeyedVectors classes (rebuilt as plain attribute holders),
    containers, scalars and numpy arrays; anything else (e.g. ``os.system``) is refused. Arrays
    gensim stored beside the file (``<path>.vectors.npy``) are read with ``allow_pickle=False``.
    Returns a fresh gensim ``KeyedVectors`` built from the keys and the vectors.
    """
    import pickle

    from gensim.models import KeyedVectors

    with open(path, "rb") as f:
        obj = _restricted_unpickler()(f).load()
    if not isinstance(obj, _SavedKeyedVectors):
        raise ValueError(f"not a gensim KeyedVectors file (holds a {type(obj).__name__})")
    attrs = vars(obj)
    keys = attrs.get("index_to_key")
    if keys is None and isinstance(attrs.get("vocab"), dict):  # gensim 3: vocab[word].index
        keys = sorted(attrs["vocab"], key=lambda w: vars(attrs["vocab"][w]).get("index", 0))
    vectors = attrs.get("vectors")
    if vectors is None:
        side = f"{path}.vectors.npy"
        if not os.path.isfile(side):
            raise ValueError(f"the vectors are stored separately and {side} is missing")
        vectors = np.array(np.load(side, mmap_mode="r", allow_pickle=False))  # a header larger than the file fails
    if keys is None or not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or len(keys) != len(vectors):
        raise ValueError("not a gensim KeyedVectors file (no matching index_to_key and vectors)")
    if not all(isinstance(k, str) for k in keys):
        raise pickle.UnpicklingError("KeyedVectors keys must be strings")
    kv = KeyedVectors(int(vectors.shape[1]), count=0, dtype=vectors.dtype)
    kv.add_vectors(list(keys), vectors)
    return kv


def load_word_vectors(path: str, key: str = "TRAINER.EMOCOOP.GLOVE_MODEL"):
    """A gensim ``KeyedVectors`` from a ``.kv``/``.model`` file (restricted unpickling, see
    :func:`load_saved_keyed_vectors`), word2vec binary or word2vec/GloVe text (parsed, never unpickled)."""
    import pickle

    from gensim.models import KeyedVectors

    try:
        if path.endswith((".kv", ".model")):
            return load_saved_keyed_vectors(path)
        if path.endswith(".bin"):
            return KeyedVectors.load_word2vec_format(path, binary=True)
        head = _first_line(path).split()
        has_header = len(head) == 2 and all(t.isdigit() for t in head)
        return KeyedVectors.load_word2vec_format(path, binary=False, no_header=not has_header)
    except (OSError, ValueError, EOFError, UnicodeDecodeError, AttributeError, pickle.UnpicklingError, TypeError,
            IndexError, KeyError, ImportError) as e:
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
