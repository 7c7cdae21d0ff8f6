"""Exceptions that name the offending file or annotation, so a user can fix their data."""


class BoxcasegError(Exception):
    """Base class for every error this package raises on purpose."""


class DataError(BoxcasegError):
    """Input data is missing, unreadable or malformed. The message names the file/annotation."""


class ImageReadError(DataError):
    """An image file is missing or cannot be decoded."""


class ConfigError(BoxcasegError):
    """A configuration file or override is invalid (unknown key, wrong type)."""


class TrainingDivergedError(BoxcasegError):
    """A loss became NaN or infinite; raised before any checkpoint of that state is written."""
