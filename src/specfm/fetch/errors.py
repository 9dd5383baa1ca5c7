"""Exceptions of the fetch layer.

Every message is a single line that says what was tried and what to do by hand, because it ends up
as the last line of a Snakemake job log on a cluster where nobody is watching.
"""

from __future__ import annotations


class FetchError(RuntimeError):
    """A file could not be obtained from any source."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # force one line


class ChecksumError(FetchError):
    """Bytes were obtained but their sha256 is not the pinned or recorded one (never retried)."""


class ArchiveError(FetchError):
    """An archive is corrupt, unsafe (absolute or '..' member paths) or lacks the wanted members."""


def checksum_hint(expected: str | None, lock) -> str:
    """The checksum a file placed by hand must have, for the end of an error message."""
    if expected:
        return f"sha256 {expected}"
    if lock is not None:
        return f"sha256 recorded in {lock.path} on first fetch"
    return "sha256 not pinned"
