"""The trainer registry (``@TRAINER_REGISTRY.register()`` on a TrainerBase subclass)."""
from utils.registry import Registry

TRAINER_REGISTRY = Registry("trainer")
