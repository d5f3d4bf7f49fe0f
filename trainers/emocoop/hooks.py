"""EmoCoOp's hooks: one-off initialisation before training, and the auxiliary-weight schedule."""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List

from trainers.engine.hooks import HookBase

logger = logging.getLogger(__name__)


class InitHook(HookBase):
    """Runs initialisers (GloVe context, k-means visual prompts) in ``before_train`` when the run
    starts from scratch; a resumed run (``trainer.start_epoch > 0``) keeps its trained weights.
    Priority HIGHEST: the weights are set before any other hook's ``before_train``."""

    priority = "HIGHEST"

    def __init__(self, initialisers: List[Callable[[], None]]) -> None:
        self.initialisers = list(initialisers)

    def before_train(self) -> None:
        if not self.initialisers:
            return
        if self.trainer.start_epoch > 0:
            logger.info("resumed run: GloVe / k-means initialisation skipped (weights come from the checkpoint)")
            return
        for init in self.initialisers:
            init()


class AuxWeightHook(HookBase):
    """Updates the auxiliary-loss weighting once per validation, from ``trainer.last_val``.

    Priority ABOVE_NORMAL: after :class:`~trainers.engine.hooks.EvalHook` (which sets ``last_val``)
    and before the checkpoint hook (so checkpoints hold the updated schedule). The score is the validation
    metric ``score_key`` (a percentage) divided by 100; if the evaluator does not report it (e.g.
    ``hit@2`` on single-label data) the evaluator's main metric is used, with a warning.
    """

    priority = "ABOVE_NORMAL"

    def __init__(self, weighting, score_key: str = "hit@2") -> None:
        self.weighting = weighting
        self.score_key = score_key
        self._warned = False

    def after_epoch(self) -> None:
        t = self.trainer
        if not t.last_val:
            return
        key = self.score_key
        if key not in t.last_val:
            key = t.evaluator.main_metric
            if not self._warned:
                logger.warning(f"TRAINER.EMOCOOP.WEIGHT_SCORE {self.score_key!r} is not a validation metric "
                               f"(have: {', '.join(t.last_val)}): the aux weight follows {key!r}")
                self._warned = True
        self.weighting.update(float(t.last_val[key]) / 100.0, t.epoch + 1)
        t.writer.scalars("train", {"aux_weight": self.weighting.weight}, t.epoch + 1)

    def state_dict(self) -> Dict[str, Any]:
        return {"weighting": self.weighting.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("weighting"):
            self.weighting.set_state(state["weighting"])
