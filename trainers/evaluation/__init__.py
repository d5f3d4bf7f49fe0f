"""Evaluators: ``Classification`` (single-label) and ``MultiLabel``; see :mod:`.base` for the contract."""
from .base import EVALUATOR_REGISTRY, EvaluatorBase, build_evaluator
from .classification import Classification
from .multilabel import MultiLabel, average_precision

__all__ = [
    "EVALUATOR_REGISTRY",
    "EvaluatorBase",
    "build_evaluator",
    "Classification",
    "MultiLabel",
    "average_precision",
]
