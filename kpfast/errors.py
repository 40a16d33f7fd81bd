"""The exceptions kpfast raises for problems the user can fix.

Every one derives from :class:`KpfastError`, so a program (and the ``kpfast`` command line) can
tell a user's mistake (a wrong key, a corrupt file, bad data) from a bug: the CLI prints a
``KpfastError`` as one line and re-raises anything else with its traceback. Each also derives
from the built-in exception that fits it best, so ``except ValueError`` keeps working.

:class:`Interrupted` is the one exception here that is not a ``KpfastError``: it is a
``KeyboardInterrupt`` (Ctrl-C must never be swallowed by ``except Exception``) whose message says
what was saved and how to continue.
"""
from __future__ import annotations

import pickle

__all__ = ["CheckpointError", "ConfigError", "DataError", "DataNotFoundError", "DeviceError", "DiskFullError",
           "Interrupted", "InvalidKeyError", "KeyFileError", "KeyPicklingError", "KeyMismatchError", "KpfastError", "MissingExtraError",
           "OutputExistsError", "TimeLimitReached"]


class KpfastError(Exception):
    """Base of every error kpfast raises for a problem the user can fix."""

    exit_code = 2  # what the command line returns for it
    label = "error: "  # how the command line introduces its message


class KeyFileError(KpfastError, ValueError):
    """A key file is missing, unreadable, corrupted or invalid."""


class KeyMismatchError(KpfastError, ValueError):
    """The key does not match the one a model, a run or a folder was made with."""


class DataError(KpfastError, ValueError):
    """A data set, image file or folder cannot be used as given."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data set, image file or folder does not exist."""


class CheckpointError(KpfastError, ValueError):
    """A checkpoint or saved model is missing, corrupt, of another kind or of another run."""


class ConfigError(KpfastError, ValueError):
    """A setting or option is invalid, or does not fit the others (or the run it continues)."""


class DeviceError(KpfastError, ValueError):
    """The requested device is not available to this torch build or on this machine."""


class DiskFullError(KpfastError, OSError):
    """A file could not be written because the disk (or quota) is full; the old file is kept."""


class InvalidKeyError(ConfigError):
    """Key parameters or key material are invalid (wrong size, not a permutation, ...)."""


class KeyPicklingError(KpfastError, pickle.PicklingError):
    """An object holding key material was about to be pickled (keys leave only through
    ``KeySet.save`` and ``ProtectedModel.save``)."""


class OutputExistsError(KpfastError, FileExistsError):
    """An output (a key file, a run folder, an export) exists and kpfast will not overwrite it."""


class MissingExtraError(KpfastError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class TimeLimitReached(KpfastError, RuntimeError):
    """A run stopped at its time limit with its state saved: run the same command again."""

    exit_code = 3
    label = ""  # not a failure: the command is meant to be called again


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says what is saved and how to continue."""
