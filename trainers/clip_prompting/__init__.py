"""CLIP prompt learning and baselines: the CLIP trainer base, zero-shot CLIP, linear probe, CoOp, CoCoOp."""
