"""Ctrl-C that stops work at a safe point and says truthfully what was kept.

:func:`deferred_interrupt` turns the first SIGINT inside its block into a request
(``stop.requested``) that the work loop answers at its next safe point: a training loop after
the update in progress, with a checkpoint. A second SIGINT raises ``KeyboardInterrupt`` at once.
:class:`Interrupted` is the ``KeyboardInterrupt`` that carries the one line the CLI prints
(what was saved, how to resume).

Only the main thread can handle signals; elsewhere, and where SIGINT is ignored (sweep pool
workers leave Ctrl-C to their driver) or handled by other code, the block changes nothing and
``stop.requested`` stays False. Blocks nest: an inner block shares the outer one's request, so
the outermost caller (a sweep driving runs in its own process) decides when to stop.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "StopRequest", "deferred_interrupt"]

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, stopped cleanly or not; ``str(exc)`` says what was kept and how to resume."""


class StopRequest:
    """``requested``: Ctrl-C was pressed once inside the block; ``outermost``: this block
    installed the handler (no enclosing block will answer the request)."""

    def __init__(self, state: dict | None, outermost: bool):
        self._state, self.outermost = state, outermost

    @property
    def requested(self) -> bool:
        return bool(self._state and self._state["requested"])


_active: dict | None = None  # the state of the installed handler (main thread only)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[StopRequest]:
    global _active
    if _active is not None and threading.current_thread() is threading.main_thread():
        yield StopRequest(_active, outermost=False)  # nested: the outer block's request
        return
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield StopRequest(None, outermost=True)
        return
    state = {"requested": False}

    def handler(signum, frame):
        if state["requested"]:  # the second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        state["requested"] = True
        log.warning("Ctrl-C: stopping at the next safe point (after the update in progress, "
                    "with a checkpoint where there is a run directory); Ctrl-C again stops "
                    "at once")

    signal.signal(signal.SIGINT, handler)
    _active = state
    try:
        yield StopRequest(state, outermost=True)
    finally:
        _active = None
        signal.signal(signal.SIGINT, signal.default_int_handler)
