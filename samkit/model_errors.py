"""The errors about model files, in a module with no pack imports, so every module that reads,
finds, downloads or loads a model file can raise and catch the same types.

* :class:`ModelFileError`: a model file that exists but cannot be loaded (a folder given as
  the file, a missing optional reader, ...);
* :class:`DamagedCheckpoint`: empty, cut short, corrupt, or something saved in its place;
* :class:`UnsupportedCheckpoint`: readable, but not a network the pack runs.

Every message names the file, says what it looks like and what to do. ``looks`` holds the
middle part alone (``"is empty (0 bytes)"``) where the raiser knows it, for callers that name
the file their own way (a download checks a hidden partial file and names the file it becomes).
"""

from __future__ import annotations


class ModelFileError(ValueError):
    """A model file that exists but cannot be loaded (message: the file, what it is, what to do)."""

    def __init__(self, message: str, looks: str | None = None):
        super().__init__(message)
        self.looks = looks


class DamagedCheckpoint(ModelFileError):
    """The file is empty, cut short, corrupt, or something saved in its place (an HTML error page)."""


class UnsupportedCheckpoint(ModelFileError):
    """The file reads, but holds something the pack cannot run (another network, HQ-SAM, ...)."""
