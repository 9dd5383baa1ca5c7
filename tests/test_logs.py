"""The one logging set-up: a requeued job's log keeps the first attempt's lines and the reason it ended."""

from __future__ import annotations

import logging

import pytest

from specfm.logs import rule_logging


def test_second_attempt_appends_to_the_first_attempts_log(tmp_path):
    log = tmp_path / "logs" / "job.log"
    with rule_logging(log):
        logging.getLogger("specfm.x").info("attempt one")
    with rule_logging(log):
        logging.getLogger("specfm.x").info("attempt two")
    text = log.read_text()
    assert "attempt one" in text and "attempt two" in text
    assert text.index("attempt one") < text.index("attempt two")


def test_a_signal_ended_job_writes_why_into_its_log(tmp_path):
    log = tmp_path / "job.log"
    with pytest.raises(SystemExit):
        with rule_logging(log):
            raise SystemExit(75)  # what specfm.train's Preempted is after SIGTERM
    assert "failed: 75" in log.read_text()


def test_handlers_are_removed_after_the_block(tmp_path):
    before = list(logging.getLogger().handlers)
    with rule_logging(tmp_path / "a.log"):
        pass
    assert logging.getLogger().handlers == before
