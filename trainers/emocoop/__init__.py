"""EmoCoOp (multi-label emotion): its trainer, model, config node, validation and hooks.

The swappable parts it assembles (prompt learner, visual prompts, chromatic module, loss weighting,
auxiliary head) live in :mod:`trainers.components`."""
