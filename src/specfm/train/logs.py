"""Logging for training jobs: the rule's `log:` file plus stderr, without breaking tqdm bars."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

LOGGER = "specfm.train"


class _TqdmHandler(logging.StreamHandler):
    """Writes records through tqdm.write so they don't tear the progress bars."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO,
                  stderr: bool = True) -> logging.Logger:
    """Root logging to `log_path` and stderr; returns the "specfm.train" logger.

    The file is appended to, so a resumed job's lines follow the preempted job's. Idempotent
    (replaces the handlers it added before). Under torchrun, ranks > 0 log warnings only.
    """
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_specfm", False)]:
        root.removeHandler(h)
        h.close()
    r = int(os.environ.get("RANK", 0))
    tag = f"[rank {r}] " if r else ""
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
    handlers: list[logging.Handler] = []
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    if stderr:
        handlers.append(_TqdmHandler())
    for h in handlers:
        h._specfm = True
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level if r == 0 else max(level, logging.WARNING))
    return logging.getLogger(LOGGER)
