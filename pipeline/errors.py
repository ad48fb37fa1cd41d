"""The user-facing error hierarchy.

A ``PipelineError`` is a user's mistake or an environment problem (bad params, missing
dataset, corrupt archive): the CLI prints its message as one line and exits with its
``exit_code``, with no stack trace. Anything else is a programming error and crashes
loudly.
"""


class PipelineError(Exception):
    """A problem the user can fix; its message says what is wrong and how to fix it."""

    exit_code = 1


class ConfigError(PipelineError):
    """params.yaml or a search-space file is invalid."""

    exit_code = 2


class DataError(PipelineError):
    """A dataset is missing, unreadable or unusable."""


class DownloadError(DataError):
    """A file could not be fetched from any source."""


class ChecksumError(DownloadError):
    """A file's SHA-256 does not match the pinned value."""


class UnsafeArchiveError(DataError):
    """An archive member would be written outside the extraction directory."""


class TuneStateError(PipelineError):
    """The saved search in models/tuner/ is unreadable or belongs to another search."""

    exit_code = 2


class SearchFailedError(PipelineError):
    """The search could not produce a usable trial (too many failures in a row, none done)."""
