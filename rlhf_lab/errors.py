"""Errors that stop a run with a message for the user (no traceback): bad data, config or plugins."""


class RlhfLabError(Exception):
    """Base class: the CLI prints the message and exits with status 1."""


class ConfigError(RlhfLabError):
    pass


class DataError(RlhfLabError):
    pass


class PluginError(RlhfLabError):
    pass
