"""Readers of the public datasets' native on-disk layouts (one module per format) and their shared parts."""
