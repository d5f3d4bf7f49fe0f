"""Bottom-layer utilities shared by every package: user errors, atomic file IO and locks, safe unpickling, progress bars, registries, fault-injection kill points. Imports nothing of the project."""
