"""Exceptions with messages meant for people: each names the file/argument and the reason."""


class ReIDError(Exception):
    """Base class: the CLI prints these as `error: <message>` instead of a stack trace."""


class DataError(ReIDError):
    """Bad dataset input: missing folder, unparseable name, unreadable image, empty split."""


class ConfigError(ReIDError):
    """Bad configuration file or override."""


class ModelError(ReIDError):
    """Unknown model name, incompatible checkpoint or weights."""


class TrainingError(ReIDError):
    """Training cannot continue (e.g. the loss became NaN/inf)."""


class MetricInputError(ReIDError, ValueError):
    """Inputs to an evaluation function are malformed (shape, NaN, empty, unknown option)."""
