"""Errors that reach users: one paragraph naming the file, the field and the fix."""


class TBPSError(Exception):
    """A problem with the user's input; the CLI prints it without a traceback and exits 2."""


class DatasetError(TBPSError):
    """Missing or malformed data-set files."""


class ConfigError(TBPSError):
    """An experiment, override or head that does not exist or does not fit."""


class DivergedError(TBPSError):
    """Training produced a non-finite loss; the run stops and its last checkpoint stays."""
