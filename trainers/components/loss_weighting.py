"""How the auxiliary loss is weighted against the main loss (EmoCoOp).

Calling contract (every registered weighting, an ``nn.Module``):

* ``combine(main, aux) -> (loss, {"aux_weight": float tensor})``: the training loss from the
  main and auxiliary scalar losses;
* ``update(score, epoch) -> None``: called once per validation with the validation score (a
  fraction, e.g. hit@2 / 100) and the 1-based epoch it was measured after;
* ``weight``: the current auxiliary weight (a float, for logs);
* ``get_state() / set_state(dict)``: plain state that is not a parameter (saved by the hook
  that calls ``update``, so a resumed run continues the schedule exactly).

Registered names: ``fixed``; the validation-driven schedule ``conservative`` / ``aggressive``
(presets) and ``custom`` (every value from the config); ``uncertainty`` (learned log-variances).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from utils.errors import ConfigError
from utils.registry import Registry

logger = logging.getLogger(__name__)
LOSS_WEIGHTINGS = Registry("loss weighting (TRAINER.EMOCOOP.WEIGHT_STRATEGY)")


class LossWeighting(nn.Module):
    """Base class: a constant weight, no schedule."""

    def __init__(self, initial_weight: float = 0.3) -> None:
        super().__init__()
        if initial_weight < 0:
            raise ConfigError(f"the auxiliary loss weight must be >= 0, got {initial_weight}")
        self.current = float(initial_weight)

    @property
    def weight(self) -> float:
        return self.current

    def combine(self, main: torch.Tensor, aux: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return main + self.current * aux, {"aux_weight": torch.tensor(self.current)}

    def update(self, score: float, epoch: int) -> None:
        """Fixed weights ignore the validation score."""

    def get_state(self) -> Dict[str, Any]:
        return {"current": self.current}

    def set_state(self, state: Dict[str, Any]) -> None:
        self.current = float(state.get("current", self.current))

    @classmethod
    def from_config(cls, node) -> "LossWeighting":
        return cls(initial_weight=float(node.AUX_LOSS_WEIGHT))


@LOSS_WEIGHTINGS.register(name="fixed")
class FixedWeight(LossWeighting):
    """``loss = main + w * aux`` with ``w = AUX_LOSS_WEIGHT`` throughout."""


@LOSS_WEIGHTINGS.register(name="custom")
class ValidationSchedule(LossWeighting):
    """The validation-driven schedule of EmoCoOp, updated once per validation.

    Rule, for a validation score ``s`` measured after epoch ``e``:

    * ``e <= min_epochs``: the weight does not change (``s`` still sets the best score);
    * ``s > best + threshold``: ``w = min(growth * w, max_weight)``, best = s, patience reset;
    * ``best < s <= best + threshold``: best = s, patience reset, ``w`` unchanged;
    * otherwise one more validation without improvement; after ``patience`` of them
      ``w = max(decay * w, min_weight)`` and the count restarts.

    ``custom`` takes threshold, patience and factors from the config; the presets
    (:class:`ConservativeSchedule`, :class:`AggressiveSchedule`) fix them as the released code does.
    """

    PRESET: Optional[Dict[str, float]] = None

    def __init__(
        self, initial_weight: float = 0.3296, min_weight: float = 0.1, max_weight: float = 0.5,
        patience: int = 10, threshold: float = 0.015, growth: float = 1.03, decay: float = 0.97,
        min_epochs: int = 3,
    ) -> None:
        super().__init__(initial_weight)
        if not 0 <= min_weight <= max_weight:
            raise ConfigError(f"aux loss weight bounds must satisfy 0 <= MIN <= MAX, got [{min_weight}, {max_weight}]")
        if patience < 1 or threshold < 0 or growth < 1 or not 0 < decay <= 1:
            raise ConfigError(
                f"bad aux weight schedule: patience {patience} (>= 1), threshold {threshold} (>= 0), "
                f"growth {growth} (>= 1), decay {decay} (in (0, 1])"
            )
        self.min_weight, self.max_weight = float(min_weight), float(max_weight)
        self.patience, self.threshold = int(patience), float(threshold)
        self.growth, self.decay, self.min_epochs = float(growth), float(decay), int(min_epochs)
        self.best: Optional[float] = None
        self.bad_count = 0
        self.history: List[Dict[str, float]] = []

    def update(self, score: float, epoch: int) -> None:
        score = float(score)
        before = self.current
        if self.best is None or epoch <= self.min_epochs:
            self.best = score if self.best is None else max(self.best, score)
        elif score > self.best + self.threshold:
            self.current = min(self.current * self.growth, self.max_weight)
            self.best, self.bad_count = score, 0
        elif score > self.best:
            self.best, self.bad_count = score, 0
        else:
            self.bad_count += 1
            if self.bad_count >= self.patience:
                self.current = max(self.current * self.decay, self.min_weight)
                self.bad_count = 0
        self.history.append({"epoch": epoch, "score": score, "weight": self.current})
        if self.current != before:
            logger.info(f"aux loss weight {before:.4f} -> {self.current:.4f} (validation score {score:.4f}, epoch {epoch})")

    def get_state(self) -> Dict[str, Any]:
        return {"current": self.current, "best": self.best, "bad_count": self.bad_count, "history": list(self.history)}

    def set_state(self, state: Dict[str, Any]) -> None:
        super().set_state(state)
        self.best = state.get("best")
        self.bad_count = int(state.get("bad_count", 0))
        self.history = list(state.get("history", []))

    @classmethod
    def from_config(cls, node) -> "ValidationSchedule":
        values = dict(
            patience=int(node.WEIGHT_PATIENCE), threshold=float(node.IMPROVEMENT_THRESHOLD),
            growth=float(node.GROWTH_FACTOR), decay=float(node.DECAY_FACTOR),
        )
        if cls.PRESET:
            keys = {"patience": "WEIGHT_PATIENCE", "threshold": "IMPROVEMENT_THRESHOLD",
                    "growth": "GROWTH_FACTOR", "decay": "DECAY_FACTOR"}
            changed = [f"{keys[k]} {values[k]} -> {v}" for k, v in cls.PRESET.items() if not math.isclose(values[k], v)]
            if changed:
                logger.info(f"WEIGHT_STRATEGY {node.WEIGHT_STRATEGY}: preset values replace {', '.join(changed)}"
                            " (use WEIGHT_STRATEGY custom to take them from the config)")
            values.update(cls.PRESET)
        return cls(
            initial_weight=float(node.AUX_LOSS_WEIGHT), min_weight=float(node.MIN_AUX_LOSS_WEIGHT),
            max_weight=float(node.MAX_AUX_LOSS_WEIGHT), min_epochs=int(node.MIN_EPOCHS_BEFORE_ADJUST), **values,
        )


@LOSS_WEIGHTINGS.register(name="conservative")
class ConservativeSchedule(ValidationSchedule):
    """Preset of the released code: +0.015 to count as improvement, patience 10, x1.03 / x0.97."""

    PRESET = {"threshold": 0.015, "patience": 10, "growth": 1.03, "decay": 0.97}


@LOSS_WEIGHTINGS.register(name="aggressive")
class AggressiveSchedule(ValidationSchedule):
    """Preset of the released code: +0.005 to count as improvement, patience 5, x1.1 / x0.9."""

    PRESET = {"threshold": 0.005, "patience": 5, "growth": 1.1, "decay": 0.9}


@LOSS_WEIGHTINGS.register(name="uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Homoscedastic-uncertainty weighting (Kendall et al., CVPR 2018), classification form.

    ``loss = exp(-s_main) L_main + s_main / 2 + exp(-s_aux) L_aux + s_aux / 2`` with learned
    log-variances ``s``; ``s_main = 0`` and ``s_aux = -log(AUX_LOSS_WEIGHT)`` at the start, so
    the first steps weight the losses as the fixed rule does. ``weight`` reports
    ``exp(-s_aux) / exp(-s_main)`` (the effective relative weight of the auxiliary loss).
    """

    def __init__(self, initial_weight: float = 0.3296) -> None:
        super().__init__(initial_weight)
        if initial_weight <= 0:
            raise ConfigError("uncertainty weighting needs AUX_LOSS_WEIGHT > 0 (its start value)")
        self.log_vars = nn.Parameter(torch.tensor([0.0, -math.log(initial_weight)]))

    @property
    def weight(self) -> float:
        s = self.log_vars.detach()
        return float(torch.exp(s[0] - s[1]))

    def combine(self, main: torch.Tensor, aux: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        s = self.log_vars
        loss = torch.exp(-s[0]) * main + 0.5 * s[0] + torch.exp(-s[1]) * aux + 0.5 * s[1]
        return loss, {"aux_weight": torch.exp(s[0] - s[1]).detach()}

    def get_state(self) -> Dict[str, Any]:
        return {}

    def set_state(self, state: Dict[str, Any]) -> None:
        """The log-variances are parameters: they are saved with the model."""


def build_loss_weighting(node) -> LossWeighting:
    """The weighting named by ``node.WEIGHT_STRATEGY`` (a ``TRAINER.EMOCOOP`` node)."""
    return LOSS_WEIGHTINGS.get(str(node.WEIGHT_STRATEGY)).from_config(node)
