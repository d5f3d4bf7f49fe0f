"""User-facing errors.

Anything a user can get wrong (a config key, a file, a name) raises :class:`EmoLabError`
with a one-line message that names the culprit. ``train.py`` and the tools print it as
``error: <message>`` and exit with status 2, without a traceback.
"""


class EmoLabError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


class ConfigError(EmoLabError):
    """Unknown config key, wrong value type, or unknown registered name."""


class DatasetError(EmoLabError):
    """Missing or malformed dataset files, bad labels, impossible few-shot requests."""


class CheckpointError(EmoLabError):
    """A checkpoint or weight file that is missing or cannot be read."""


class WriteError(EmoLabError):
    """A file cannot be written where the settings say (a folder in its path is a file, ...)."""
