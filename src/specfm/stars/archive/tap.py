"""Retrying TAP exchanges: one place that turns flaky archive jobs into retries or one clear error.

Archive TAP services fail transiently (a job killed by a server restart, an overloaded queue that
never starts the job, a response cut mid-VOTable), so every exchange runs under `with_retries`:
each failure is retried with exponential backoff, and when the retries are spent the error names
the partition and the full query, as the last line of the job log on a cluster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from specfm.fetch.errors import FetchError

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_WAIT = 300.0  # cap on one backoff sleep, seconds


class ArchiveQueryError(FetchError):
    """A TAP query failed permanently (retries spent); the message names the partition and the query."""


class JobFailed(RuntimeError):
    """One attempt failed in a way worth retrying (job ERROR/ABORTED, time-out, bad response)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one query: attempts after the first, first backoff (doubles), job time-out
    and polling interval, all in seconds."""

    retries: int = 4
    backoff: float = 30.0
    timeout: float = 3600.0
    poll: float = 5.0

    @classmethod
    def from_config(cls, cfg: dict | None) -> "RetryPolicy":
        cfg = dict(cfg or {})
        return cls(**{k: cfg[k] for k in ("retries", "backoff", "timeout", "poll") if k in cfg})


def with_retries(attempt: Callable[[], T], *, what: str, query: str, policy: RetryPolicy) -> T:
    """Run `attempt` until it succeeds or `policy.retries` retries are spent.

    Any exception from the TAP client counts as transient: the client libraries do not tell a
    server hiccup from a bad query, and retrying a bad query only costs the backoff before the
    permanent error, which carries the last message so a bad query is still obvious.
    """
    errors = []
    for n in range(policy.retries + 1):
        try:
            return attempt()
        except Exception as exc:  # noqa: BLE001 - see docstring; re-raised below with context
            errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
            if n == policy.retries:
                break
            delay = min(MAX_WAIT, policy.backoff * 2**n)
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.2f s",
                        what, n + 1, policy.retries + 1, errors[-1], delay)
            time.sleep(delay)
    raise ArchiveQueryError(
        f"{what}: TAP query failed after {policy.retries + 1} attempts; last error: {errors[-1]}; "
        f"query: {' '.join(query.split())}"
    )


def poll_until_done(get_phase: Callable[[], str], *, abort: Callable[[], None], policy: RetryPolicy,
                    job: str) -> None:
    """Poll a UWS job until COMPLETED; raise JobFailed on ERROR/ABORTED or after `policy.timeout`
    (aborting the job first, so a stuck query does not keep running on the archive)."""
    deadline = time.monotonic() + policy.timeout
    while True:
        phase = (get_phase() or "").strip().upper()
        if phase == "COMPLETED":
            return
        if phase in ("ERROR", "ABORTED"):
            raise JobFailed(f"job {job} ended in phase {phase}")
        if time.monotonic() > deadline:
            try:
                abort()
            except Exception as exc:  # noqa: BLE001 - the time-out is the error worth reporting
                log.warning("could not abort job %s: %s", job, exc)
            raise JobFailed(f"job {job} still {phase or 'UNKNOWN'} after {policy.timeout:g} s (aborted)")
        time.sleep(policy.poll)
