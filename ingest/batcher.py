"""Collecting received messages into batches bounded by rows and by time.

The session's loop thread puts; the writer thread takes. A batch closes when it holds
``max_rows`` messages or when its oldest message has waited ``max_wait_s``: at low load a message
waits at most that long, under a backlog every batch is full.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from ingest.session import Inbound


class Batcher:
    def __init__(self, max_rows: int, max_wait_s: float) -> None:
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._queue: deque[Inbound] = deque()
        self._wakeup = threading.Event()

    def put(self, message: Inbound) -> None:
        # deque.append is atomic; the event wakes an idle writer without a lock per message.
        self._queue.append(message)
        if len(self._queue) == 1:
            self._wakeup.set()

    def __len__(self) -> int:
        return len(self._queue)

    def take(self, stop: threading.Event, idle_timeout_s: float = 0.5) -> list[Inbound]:
        """The next batch; empty when nothing arrived within ``idle_timeout_s`` or on stop."""
        queue = self._queue
        if not queue:
            self._wakeup.clear()
            if not queue:
                self._wakeup.wait(idle_timeout_s)
            if not queue:
                return []
        # Wait for the batch to fill, at most until its first message is max_wait_s old.
        deadline = queue[0][4] / 1000 + self.max_wait_s  # [4]: received_ms
        while len(queue) < self.max_rows and not stop.is_set():
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 0.002))
        n = min(len(queue), self.max_rows)
        popleft = queue.popleft
        return [popleft() for _ in range(n)]

    def drop_all(self) -> list[Inbound]:
        out = list(self._queue)
        self._queue.clear()
        return out
