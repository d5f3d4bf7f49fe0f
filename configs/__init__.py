"""Configuration: engine defaults, config extensions, registries and user-facing errors."""
