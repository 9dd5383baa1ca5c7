"""The one logging set-up of every rule entry point: the rule's `log:` file plus stderr.

The file is appended to, so a requeued or resumed job's lines follow the first attempt's, and a
failure (a traceback, or the signal that ended a training job) is the last thing in it. Records go
to stderr through tqdm.write so progress bars are not torn. Under torchrun, ranks > 0 log warnings
only. No torch import here: the fetch and table scripts use it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
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


def _remove_our_handlers(root: logging.Logger) -> None:
    for handler in [h for h in root.handlers if getattr(h, "_specfm", False)]:
        root.removeHandler(handler)
        handler.close()


def setup_logging(log_path: str | os.PathLike | None = None, level: int = logging.INFO,
                  stderr: bool = True) -> logging.Logger:
    """Root logging to `log_path` (appended) and stderr; returns the "specfm.train" logger.

    Idempotent: replaces the handlers an earlier call added.
    """
    root = logging.getLogger()
    _remove_our_handlers(root)
    rank = int(os.environ.get("RANK", 0))
    tag = f"[rank {rank}] " if rank else ""
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s")
    handlers: list[logging.Handler] = []
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    if stderr:
        handlers.append(_TqdmHandler())
    for handler in handlers:
        handler._specfm = True
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level if rank == 0 else max(level, logging.WARNING))
    return logging.getLogger(LOGGER)


@contextlib.contextmanager
def rule_logging(log_path: str | Path, level: int = logging.INFO):
    """`setup_logging(log_path)` for the block; any exception or non-zero exit is logged with its reason."""
    setup_logging(log_path, level)
    try:
        yield logging.getLogger("specfm")
    except BaseException as exc:
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            logging.getLogger("specfm").error("failed: %s\n%s", exc or type(exc).__name__,
                                              traceback.format_exc())
        raise
    finally:
        _remove_our_handlers(logging.getLogger())
