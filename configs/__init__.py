"""Configuration only: engine defaults (``defaults.py``), building and merging configs (``config.py``),
config extensions (``registry.py``) and checks of the engine's values (``validate.py``). Errors,
file IO and registries live in :mod:`utils`."""
