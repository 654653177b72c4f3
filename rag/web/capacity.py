"""Admission control for model work: a few run at once, a few wait, the rest are told "busy".

A generation holds a model lock for as long as it runs, so an HTTP server that queues
without limit hangs every later client behind one long answer. :class:`Capacity` admits at
most ``running + waiting`` requests; an admitted request then waits up to ``wait_s`` for one
of the ``running`` slots. Anything beyond is refused at once, so the server can answer 503
with Retry-After instead of hanging. Thread-safe: the slot is taken and given back in the
worker thread that runs the model, so a client that leaves does not free a slot still in use.
"""

from __future__ import annotations

import threading

__all__ = ["Capacity"]


class Capacity:
    def __init__(self, running: int = 1, waiting: int = 4, wait_s: float = 120.0) -> None:
        if running < 1 or waiting < 0:
            raise ValueError("running must be >= 1 and waiting >= 0")
        self.running = running
        self.waiting = waiting
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(running)
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def admitted(self) -> int:
        return self._admitted

    def admit(self) -> bool:
        """Reserve a place (running or waiting); False when the server is full."""
        with self._lock:
            if self._admitted >= self.running + self.waiting:
                return False
            self._admitted += 1
            return True

    def acquire(self) -> bool:
        """Wait (at most ``wait_s``) for a running slot; call only after :meth:`admit` said yes."""
        return self._slots.acquire(timeout=self.wait_s)

    def release(self, *, had_slot: bool) -> None:
        """Give back the slot (if :meth:`acquire` got one) and the admission."""
        if had_slot:
            self._slots.release()
        with self._lock:
            self._admitted -= 1
