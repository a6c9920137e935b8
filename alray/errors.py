"""The exceptions alray raises for bad input and bad state.

Every error a user can cause is an ``AlrayError``; the CLI prints its message (one line
per problem) and exits 2. Anything else escaping is a bug in alray.
"""
from __future__ import annotations


class AlrayError(Exception):
    """Base of every error caused by input, configuration or state, not by a bug."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems) if problems else [message]
        super().__init__(message if problems is None else "\n".join(self.problems))


class ConfigError(AlrayError):
    """An option or configuration value is invalid (all problems listed at once)."""


class PoolSchemaError(AlrayError):
    """A pool does not follow the pool contract (docs/formats.md)."""


class EmptyPoolError(AlrayError):
    """A pool (or the part of it a step needs) has no rows."""


class PoolExhaustedError(AlrayError):
    """A query asks for more posts than are left unlabelled."""


class LabelsError(AlrayError):
    """A labels file cannot be imported (unknown ids, bad classes, conflicts)."""


class CheckpointError(AlrayError):
    """A checkpoint is missing, corrupt or does not fit the pool it is used with."""


class StateError(AlrayError):
    """A run directory is corrupt, from another version, or conflicts with the config."""


class InputWarning(UserWarning):
    """Input that works but deserves a look (validation classes the pool never has)."""
