"""One background writer thread per run, so that the step loop never waits for the disk.

Output writes and resume snapshots are queued as jobs and run in order; an error of a job is kept and
re-raised in the main thread at the next sync point (``wait`` or ``take_error``). The thread is
joined by ``close`` (or on leaving a ``with`` block), on success and on error.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Sequence

log = logging.getLogger("hpc_fcn")


class BackgroundWriter:
    """Runs write jobs in one thread; at most ``depth`` submitted batches are in flight (their data is held).

    ``what`` names the output in the message of an ``OSError`` that does not name its file itself.
    """

    def __init__(self, depth: int = 2, what: str = "the output"):
        self._q: queue.Queue = queue.Queue()
        self._depth = depth
        self._what = what
        self._pending: list[threading.Event] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="hpc_fcn-writer", daemon=True)
        self._thread.start()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            jobs, done = item
            try:
                if self._error is None:
                    for job in jobs:
                        job()
            except BaseException as exc:  # re-raised in the main thread
                self._error = exc
            finally:
                done.set()

    def submit(self, jobs: Sequence[Callable[[], None]]) -> threading.Event:
        """Queue one batch of jobs (run in order after the batches before it); returns the event set when it has
        run. Waits first while ``depth`` batches are in flight. An earlier job's error is not raised here (only
        by ``wait`` and ``take_error``, where the ranks can agree on it); the batches after it are skipped."""
        self.wait_for_room()
        done = threading.Event()
        self._pending.append(done)
        self._q.put((list(jobs), done))
        return done

    def wait_for_room(self) -> None:
        """Block while ``depth`` batches are in flight (the back-pressure of a writer slower than the loop)."""
        self._pending = [e for e in self._pending if not e.is_set()]
        while len(self._pending) >= self._depth:
            self._pending.pop(0).wait()

    def drain(self) -> None:
        """Block until every queued job has run (an error stays for ``take_error``)."""
        while self._pending:
            self._pending.pop(0).wait()

    def wait(self) -> None:
        """Block until every queued job has run; raise the first error."""
        self.drain()
        self._raise()

    def take_error(self) -> BaseException | None:
        """The error a job raised, if any, as it would be raised (cleared: it is reported once)."""
        try:
            self._raise()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller to share over the ranks
            return exc
        return None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Run what is queued, then end and join the thread (idempotent)."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
        self._pending = []

    def _raise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            if isinstance(exc, OSError) and not getattr(exc, "one_line", False):
                raise OSError(exc.errno, f"writing {self._what} failed: {exc.strerror or exc}") from exc
            raise exc
