"""The simulation's injected crashes are counted, not logged as the API's unhandled errors."""

from __future__ import annotations

import logging

import pytest

from app.simulate.faults import API_LOGGER, SimulatedCrash, commit_crashes


def _unhandled(exc: BaseException) -> None:
    logging.getLogger(API_LOGGER).error("unhandled error", exc_info=exc)


def test_an_injected_crash_is_not_logged_as_an_unhandled_error_while_a_run_injects_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crash = SimulatedCrash("simulated crash between Stripe's answer and our commit")
    with caplog.at_level(logging.ERROR, logger=API_LOGGER), commit_crashes():
        _unhandled(crash)
        _unhandled(RuntimeError("a real defect"))
    _unhandled(crash)  # outside a run nothing is filtered

    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert len(logged) == 2
    assert isinstance(logged[0], RuntimeError)
    assert logged[1] is crash
