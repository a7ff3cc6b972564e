"""Exceptions raised at the edges (loading files, validating configs).

Messages say what was expected, what was found and what to do about it.
"""


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, unsafe or does not match the architecture."""


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent with another one."""
