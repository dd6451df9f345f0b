"""Exceptions that the command line reports as a one-line error instead of a traceback."""


class AlignKDError(Exception):
    """Base class for errors caused by input, config or files that the user can fix."""


class DataError(AlignKDError):
    """A data sample, file or data set breaks a rule; the message names it and the rule."""


class ModelError(AlignKDError):
    """A model checkpoint or config cannot be loaded or does not fit the requested use."""
