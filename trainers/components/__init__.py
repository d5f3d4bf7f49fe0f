"""Swappable components, one registry per kind (each registry's docstring states the contract)."""
