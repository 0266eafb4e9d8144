"""Long computations (layer grids, occlusion, t-SNE) in a bounded worker pool, with progress.

A job is submitted with a key (subject, kind and parameters): asking again for a job that is still
running returns the same job, so a hundred clicks make one computation. Progress is a count of steps
and a message; :meth:`Job.events` yields a new snapshot whenever it changes (served as server-sent
events).

Cancelling is cooperative: :meth:`Job.cancel` sets a flag, and the job's next :meth:`Job.report`
raises :class:`Cancelled` inside the computation, which ends it with status ``cancelled`` (a job
still queued never starts). The web app cancels a job when asked (``DELETE /api/jobs/{id}``) and
when the last page following its events goes away.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from convlens.errors import ConvlensError
from convlens.serve.errors import RequestError

FINISHED = ("done", "error", "cancelled")


class Cancelled(Exception):
    """Raised inside a computation whose job was cancelled (at its next progress report)."""


@dataclass
class Progress:
    """What a running job reports: `done` of `total` steps and what it is doing."""

    done: int = 0
    total: int = 1
    message: str = "queued"


@dataclass
class Job:
    """One long computation and its progress."""

    id: str
    kind: str
    status: str = "queued"  # queued, running, done, error, cancelled
    progress: Progress = field(default_factory=Progress)
    result: Any = None
    error: str | None = None
    version: int = 0  # bumped on every change, so that event streams know when to send
    started: float = field(default_factory=time.monotonic)
    watchers: int = 0  # event streams following the job
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        """Done, failed or cancelled."""
        return self.status in FINISHED

    @property
    def cancelling(self) -> bool:
        """Cancel was asked for (the job stops at its next report)."""
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the job to stop at its next progress report (nothing happens to a finished job)."""
        if not self.finished:
            self._cancel.set()
            self.version += 1

    def report(self, done: int, total: int, message: str) -> None:
        """Called by the computation as it advances (from a worker thread).

        Raises:
            Cancelled: the job was cancelled; the computation ends here.
        """
        if self._cancel.is_set():
            raise Cancelled(f"cancelled at step {self.progress.done} of {self.progress.total}")
        self.progress = Progress(done, total, message)
        self.version += 1

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state without the result (which can be large)."""
        p = self.progress
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "done": p.done,
            "total": p.total,
            "message": p.message,
            "error": self.error,
            "cancelling": self.cancelling and not self.finished,
        }

    async def events(self, poll: float = 0.05) -> AsyncIterator[dict[str, Any]]:
        """Snapshots as the job changes, ending with the final one (done, error or cancelled)."""
        seen = -1
        while True:
            version, finished = self.version, self.finished
            if version != seen:
                seen = version
                yield self.snapshot()
            if finished:
                return
            await asyncio.sleep(poll)


Work = Callable[[Job], Any]


class JobPool:
    """A bounded pool of worker threads.

    Args:
        workers: computations running at once (each subject's lock still allows one per subject).
        max_waiting: jobs queued or running before new ones are refused (HTTP 429).
        keep: finished jobs remembered for their results.
    """

    def __init__(self, workers: int = 2, max_waiting: int = 32, keep: int = 256) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convlens-job")
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._by_key: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._max_waiting = max_waiting
        self._keep = keep

    def submit(self, key: str, kind: str, work: Work) -> Job:
        """Run `work(job)` in a worker, or return the unfinished job already submitted with `key`."""
        with self._lock:
            running = self._by_key.get(key)
            if running is not None and not running.finished and not running.cancelling:
                return running
            waiting = sum(not j.finished for j in self._jobs.values())
            if waiting >= self._max_waiting:
                raise RequestError(f"{waiting} computations are waiting; try again shortly", 429)
            job = Job(id=f"{next(self._ids)}-{key[:12]}", kind=kind)
            self._jobs[job.id] = job
            self._by_key[key] = job
            self._forget_old()
        self._executor.submit(self._run, job, work)
        return job

    def done(self, kind: str, result: Any) -> Job:
        """A finished job holding a cached result (so clients follow one path)."""
        with self._lock:
            job = Job(id=f"{next(self._ids)}-cached", kind=kind, status="done", result=result)
            job.progress = Progress(1, 1, "cached")
            self._jobs[job.id] = job
            self._forget_old()
        return job

    def get(self, job_id: str) -> Job:
        """The job with this id (404 when unknown or forgotten)."""
        job = self._jobs.get(job_id)
        if job is None:
            raise RequestError(f"no job {job_id!r} (finished jobs are kept for a while only)", 404)
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel the job with this id (see :meth:`Job.cancel`); return it."""
        job = self.get(job_id)
        job.cancel()
        return job

    def shutdown(self) -> None:
        """Stop taking jobs; cancel the running ones (they stop at their next report)."""
        with self._lock:
            for job in self._jobs.values():
                job.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, job: Job, work: Work) -> None:
        try:
            job.report(0, job.progress.total, "starting")
            job.status = "running"
            job.result = work(job)
            job.status = "done"
        except Cancelled:
            job.status = "cancelled"
            job.progress = Progress(job.progress.done, job.progress.total, "cancelled")
        except ConvlensError as e:
            job.error, job.status = str(e), "error"
        except Exception as e:  # a failing model must not take the worker down; say what happened
            job.error, job.status = f"{type(e).__name__}: {e}", "error"
        job.version += 1

    def _forget_old(self) -> None:
        while len(self._jobs) > self._keep:
            old_id, old = next(iter(self._jobs.items()))
            if not old.finished:
                break
            del self._jobs[old_id]
            for k, j in list(self._by_key.items()):
                if j is old:
                    del self._by_key[k]
