"""The errors a user can cause. Each message names the problem and what to do about it;
the ``qkv`` command prints it on one line and exits with status 2 (no traceback)."""


class QkvError(Exception):
    """Base of every error qkv raises for bad input, a bad file or a bad environment."""


class ConfigError(QkvError, ValueError):
    """A configuration or option the user gave cannot be used."""


class CheckpointError(QkvError, RuntimeError):
    """A checkpoint, run or model directory is missing, incomplete or corrupt."""


class DataError(QkvError, RuntimeError):
    """A data set cannot be found, fetched or read."""


class TokenizerError(QkvError, ValueError):
    """Text the tokenizer cannot encode, or a tokenizer file that cannot be read."""


class WriteError(QkvError, OSError):
    """A file could not be written: a read-only folder, a full disk."""


class TrainingDiverged(QkvError, RuntimeError):
    """The loss or the gradient stopped being finite; the last good checkpoint is kept."""
