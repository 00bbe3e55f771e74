"""Errors that stop a run with a message for the user (no traceback): bad data, config or plugins."""


class RlhfLabError(Exception):
    """Base class: the CLI prints the message and exits with ``exit_code`` (1)."""

    exit_code = 1


class ConfigError(RlhfLabError):
    pass


class DataError(RlhfLabError):
    pass


class PluginError(RlhfLabError):
    pass


class TrainingError(RlhfLabError):
    """Training cannot go on (a non-finite loss): the last good checkpoint is kept."""


class StorageFull(TrainingError):
    """A write found no room (full disk, quota, file-size limit): its temporary file was removed and
    the file it would have replaced is kept."""


class Preempted(RlhfLabError):
    """SIGTERM: a checkpoint was saved; 143 is the conventional status of a terminated process."""

    exit_code = 143
