"""The conversation-features file format (IEMOCAP / MELD features for emotion in conversation).

A pickle holding a tuple of dicts keyed by dialogue id (VEGA's layout, 7 items)::

    (videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, trainVid, testVid)

or the DialogueRNN / MMGCN ``IEMOCAP_features.pkl`` layout (9 items; ids and sentences ignored)::

    (videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence, trainVid, testVid)

Per dialogue of L utterances: ``videoText[vid]`` [L, Dt], ``videoAudio[vid]`` [L, Da],
``videoVisual[vid]`` [L, Dv] (arrays or lists of vectors), ``videoLabels[vid]`` L class indices,
``videoSpeakers[vid]`` L speakers: strings ('M' -> 0, 'F' -> 1 for IEMOCAP; other names by sorted
order), one-hot vectors (MELD: 9 speakers; index = argmax) or integers. ``trainVid`` / ``testVid``
are collections of dialogue ids.

Loading a pickle can run code. :func:`load_pickle` therefore uses a restricted unpickler that
resolves only plain containers and scalars (``builtins`` list / dict / tuple / set / ..., and
``collections.OrderedDict`` / ``defaultdict``) and numpy arrays, dtypes and scalars; any other
global (a class, ``os.system``, torch tensors, ...) stops loading with a :class:`DatasetError`.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from utils.errors import DatasetError
from utils.safe_unpickle import SafeUnpickler

logger = logging.getLogger(__name__)

MODALITIES = ("text", "audio", "visual")
LAYOUTS = {
    7: ("videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual", "trainVid", "testVid"),
    9: ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual", "videoSentence",
        "trainVid", "testVid"),
}
IEMOCAP_CLASSES = ("happy", "sad", "neutral", "anger", "excited", "frustration")
MELD_CLASSES = ("neutral", "surprise", "fear", "sad", "happy", "disgust", "anger")

def load_pickle(path: str) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler` (``encoding="latin1"`` reads Python 2 pickles)."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DatasetError(f"conversation features file not found: {path}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"cannot read conversation features {path}: {first}") from None


@dataclass
class Dialogue:
    """One dialogue of L utterances.

    Attributes:
        vid: the dialogue id (a key of the pickled dicts).
        text, audio, visual: float32 features [L, Dt], [L, Da], [L, Dv].
        speakers: int64 speaker indices [L].
        labels: int64 class indices [L].
    """

    vid: Any
    text: np.ndarray
    audio: np.ndarray
    visual: np.ndarray
    speakers: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class ConversationFile:
    """A parsed features file: dialogues by id, the train/test id lists, dimensions and speakers."""

    dialogues: Dict[Any, Dialogue]
    train_ids: List[Any]
    test_ids: List[Any]
    dims: Dict[str, int]
    num_speakers: int
    speaker_names: List[str] = field(default_factory=list)
    num_labels: int = 0


def sort_ids(ids: Sequence[Any]) -> List[Any]:
    """Dialogue ids in a deterministic order (ids may be ints or strings)."""
    return sorted(ids, key=lambda v: (type(v).__name__, v))


def _unpack(obj: Any, source: str) -> Dict[str, Any]:
    if not isinstance(obj, (tuple, list)) or len(obj) not in LAYOUTS:
        got = f"a {type(obj).__name__} of {len(obj)} items" if isinstance(obj, (tuple, list)) else f"a {type(obj).__name__}"
        raise DatasetError(
            f"{source}: expected a 7-tuple ({', '.join(LAYOUTS[7])}) or the 9-item DialogueRNN layout, got {got}"
        )
    parts = dict(zip(LAYOUTS[len(obj)], obj))
    for key in ("videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual"):
        if not isinstance(parts[key], dict):
            raise DatasetError(f"{source}: {key} must be a dict keyed by dialogue id, got {type(parts[key]).__name__}")
    for key in ("trainVid", "testVid"):
        if isinstance(parts[key], (dict, str, bytes)) or not hasattr(parts[key], "__iter__"):
            raise DatasetError(f"{source}: {key} must be a list or set of dialogue ids, got {type(parts[key]).__name__}")
    return parts


def _features(value: Any, vid: Any, key: str, source: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{source}: {key}[{vid!r}] is not a numeric [L, D] array ({str(e).splitlines()[0]})") from None
    if arr.ndim != 2:
        raise DatasetError(f"{source}: {key}[{vid!r}] has shape {tuple(arr.shape)}, expected [L, D]")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{source}: {key}[{vid!r}] holds non-finite values")
    return arr


def _is_integer(value: Any) -> bool:
    try:
        return float(value).is_integer()
    except (TypeError, ValueError):
        return False


def _speaker_table(raw: Dict[Any, list], source: str) -> Tuple[Dict[Any, np.ndarray], int, List[str]]:
    """Speaker indices per dialogue, the number of speakers and their names (see the module docstring)."""
    kinds = set()
    for vid, spk in raw.items():
        for s in spk:
            if isinstance(s, (str, bytes)):
                kinds.add("name")
            elif np.ndim(s) == 1:
                kinds.add("onehot")
            elif np.ndim(s) == 0 and _is_integer(s):
                kinds.add("int")
            else:
                raise DatasetError(f"{source}: videoSpeakers[{vid!r}] has a speaker entry {s!r} of unknown kind")
    if len(kinds) > 1:
        raise DatasetError(f"{source}: videoSpeakers mixes speaker kinds {sorted(kinds)}")
    kind = kinds.pop() if kinds else "int"
    out: Dict[Any, np.ndarray] = {}
    if kind == "name":
        names = sorted({s.decode() if isinstance(s, bytes) else s for spk in raw.values() for s in spk})
        names = ["M", "F"] if set(names) <= {"M", "F"} else names
        index = {n: i for i, n in enumerate(names)}
        for vid, spk in raw.items():
            out[vid] = np.array([index[s.decode() if isinstance(s, bytes) else s] for s in spk], dtype=np.int64)
        return out, len(names), names
    if kind == "onehot":
        widths = {len(s) for spk in raw.values() for s in spk}
        if len(widths) != 1:
            raise DatasetError(f"{source}: one-hot speaker vectors of different lengths {sorted(widths)}")
        for vid, spk in raw.items():
            out[vid] = np.array([int(np.argmax(s)) for s in spk], dtype=np.int64)
        n = widths.pop()
        return out, n, [str(i) for i in range(n)]
    for vid, spk in raw.items():
        out[vid] = np.array([int(s) for s in spk], dtype=np.int64)
    vals = np.concatenate(list(out.values())) if out else np.zeros(0, dtype=np.int64)
    if len(vals) and vals.min() < 0:
        raise DatasetError(f"{source}: negative speaker index {int(vals.min())}")
    n = int(vals.max()) + 1 if len(vals) else 1
    return out, n, [str(i) for i in range(n)]


def parse_conversation(obj: Any, source: str, num_classes: Optional[int] = None) -> ConversationFile:
    """Check and convert an unpickled features tuple.

    Every dialogue of trainVid and testVid must be in all five dicts with the same utterance
    count L in each, feature dimensions must agree across dialogues, labels must lie in
    ``[0, num_classes)`` (when given) and trainVid / testVid must not overlap.

    Raises:
        DatasetError: one line naming the item and dialogue at fault.
    """
    parts = _unpack(obj, source)
    train_ids, test_ids = list(parts["trainVid"]), list(parts["testVid"])
    if not train_ids or not test_ids:
        raise DatasetError(f"{source}: trainVid and testVid must both list dialogues ({len(train_ids)} / {len(test_ids)})")
    overlap = set(train_ids) & set(test_ids)
    if overlap:
        raise DatasetError(f"{source}: {len(overlap)} dialogue(s) in both trainVid and testVid, e.g. {sort_ids(overlap)[0]!r}")
    if len(set(train_ids)) != len(train_ids) or len(set(test_ids)) != len(test_ids):
        raise DatasetError(f"{source}: trainVid or testVid lists a dialogue twice")
    keys = {"text": "videoText", "audio": "videoAudio", "visual": "videoVisual"}
    dims: Dict[str, int] = {}
    feats: Dict[Any, Dict[str, np.ndarray]] = {}
    labels: Dict[Any, np.ndarray] = {}
    speakers_raw: Dict[Any, list] = {}
    for vid in train_ids + test_ids:
        for key in ("videoSpeakers", "videoLabels", *keys.values()):
            if vid not in parts[key]:
                raise DatasetError(f"{source}: dialogue {vid!r} is listed in trainVid/testVid but missing from {key}")
        lab = np.asarray(parts["videoLabels"][vid])
        if lab.ndim != 1 or lab.size == 0 or not np.issubdtype(lab.dtype, np.number) or np.any(lab != np.round(lab)):
            raise DatasetError(f"{source}: videoLabels[{vid!r}] must be a non-empty list of integer class indices")
        labels[vid] = lab.astype(np.int64)
        L = len(lab)
        feats[vid] = {}
        for m, key in keys.items():
            arr = _features(parts[key][vid], vid, key, source)
            if arr.shape[0] != L:
                raise DatasetError(f"{source}: {key}[{vid!r}] has {arr.shape[0]} utterances but videoLabels has {L}")
            if dims.setdefault(m, arr.shape[1]) != arr.shape[1]:
                raise DatasetError(
                    f"{source}: {key}[{vid!r}] is {arr.shape[1]}-d but other dialogues' {m} features are {dims[m]}-d"
                )
            feats[vid][m] = arr
        spk = list(parts["videoSpeakers"][vid])
        if len(spk) != L:
            raise DatasetError(f"{source}: videoSpeakers[{vid!r}] has {len(spk)} entries but videoLabels has {L}")
        speakers_raw[vid] = spk
    all_labels = np.concatenate(list(labels.values()))
    if all_labels.min() < 0 or (num_classes is not None and all_labels.max() >= num_classes):
        bad = int(all_labels.min()) if all_labels.min() < 0 else int(all_labels.max())
        limit = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
        raise DatasetError(f"{source}: label {bad} outside {limit} (set DATASET.CONVERSATION.CLASSNAMES to the class list)")
    speakers, n_spk, names = _speaker_table(speakers_raw, source)
    dialogues = {
        vid: Dialogue(vid, feats[vid]["text"], feats[vid]["audio"], feats[vid]["visual"], speakers[vid], labels[vid])
        for vid in train_ids + test_ids
    }
    return ConversationFile(dialogues, train_ids, test_ids, dims, n_spk, names, int(all_labels.max()) + 1)
