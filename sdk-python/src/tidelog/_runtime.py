"""A private asyncio event loop on a daemon thread, for the synchronous clients.

The SDK has one implementation of the producer and consumer engines, written for asyncio on
``grpc.aio``. :mod:`tidelog.aio` runs them on the caller's loop; the synchronous
:class:`~tidelog.Producer` and :class:`~tidelog.Consumer` run them here and talk to them with
thread-safe calls. Nothing the application supplies (callbacks) runs on this thread, except
``concurrent.futures`` done-callbacks the application attaches itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running on its own daemon thread until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs ``coro`` on the loop and waits for its result (re-raising its exception)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except (TimeoutError, concurrent.futures.TimeoutError):  # distinct types before 3.11
            fut.cancel()
            raise TimeoutError(f"no answer within {timeout} s") from None

    def stop(self) -> None:
        """Stops the loop (after cancelling what still runs on it) and joins the thread."""
        if not self.loop.is_running():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):  # best effort on shutdown
            self.call(cancel_all(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()
