"""Synthetic data generators: emotion images (demo dataset and every native layout) and conversation features."""
