"""Logging set-up for rule entry points: everything (and any traceback) goes to the rule's log."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from pathlib import Path


@contextlib.contextmanager
def rule_logging(log_path: str | Path, level: int = logging.INFO):
    """Send the `logging` records of this process to `log_path` (and stderr); log any exception."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = [logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)]
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level)
    try:
        yield logging.getLogger("specfm")
    except BaseException as exc:
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            logging.getLogger("specfm").error("failed: %s\n%s", exc, traceback.format_exc())
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
