"""Graceful shutdown of `billing api`: readiness turns false first, then in-flight requests drain.

On SIGTERM the server marks the app as draining (so `/ready` answers 503 and Kubernetes takes the
pod out of its Service endpoints), keeps serving for `drain_seconds` while that change spreads to
kube-proxy and the ingress controller, and only then stops accepting connections and lets uvicorn
finish the requests in flight (up to `timeout_graceful_shutdown`). A clean drain exits 0.
A second SIGTERM or a SIGINT skips the drain delay; a second SIGINT forces the exit.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

log = logging.getLogger("app.lifecycle")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, on_drain: Callable[[], None], drain_seconds: float) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._drain_seconds = drain_seconds
        self._drain_deadline: float | None = None
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_drain()
        if sig == signal.SIGTERM and self._drain_deadline is None and not self.should_exit:
            self._drain_deadline = time.monotonic() + self._drain_seconds
            return
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and not self.should_exit:
            if not self._drain_logged:
                self._drain_logged = True
                log.info("draining: readiness is false", extra={"drain_seconds": self._drain_seconds})
            if time.monotonic() >= self._drain_deadline:
                self.should_exit = True
        return await super().on_tick(counter)
