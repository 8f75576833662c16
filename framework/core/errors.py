"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Something the user can fix (config, data, paths, arguments): no traceback, exit status 2."""


class ConfigError(UserError):
    """An experiment config is malformed, names an unknown component or key, or has a wrong type."""


class DataError(UserError):
    """A data folder or file is missing, unreadable or inconsistent."""
