"""One worker thread that owns the engine and serves N sequences ("slots") at once.

Each slot keeps its own KV state (`engine.State`), so a new request goes to the free slot whose
kept tokens share the longest prefix with its prompt and prefills only the rest. A loop turn
runs one prefill chunk of one slot (prompts never stall decoding for long), then one decode step
of every decoding slot through `runtime.batch.decode_step` (all their loop rows in one pass over
the weights, in groups that keep the engine's decode matmul). Requests beyond the N slots wait
in a bounded queue; past that, `submit` raises `QueueFull`.

Events go back through the job's `emit` callback, called from the worker thread:
("token", id), then ("end", finish_reason) or ("error", exception).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from loopcli.runtime import batch
from loopcli.runtime.engine import Cancelled, Engine, State
from loopcli.runtime.generate import Sampler


BACKOFF = 8  # a PLT prompt is snapshotted this many tokens before its end as well (see _prefill)


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is full."""


class Stopped(Exception):
    """The scheduler is shutting down (or its worker failed)."""


@dataclass
class Job:
    prompt_ids: list[int]
    sampler: Sampler
    max_new: int
    emit: Callable[[tuple], None]
    eos_ids: frozenset[int] = frozenset()
    cancel: threading.Event = field(default_factory=threading.Event)
    cached_tokens: int = 0  # prompt tokens taken from the slot's kept state


@dataclass
class Slot:
    state: State
    job: Job | None = None
    steps: object = None  # the prefill generator while prefilling
    history: list[int] = field(default_factory=list)
    pending: int | None = None  # sampled, not yet fed to the model
    produced: int = 0
    used: int = 0  # turn of the last use: ties go to the least recently used slot


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Scheduler:
    def __init__(self, engine: Engine, parallel: int = 1, queue: int = 64):
        if parallel < 1 or queue < 0:
            raise ValueError("parallel must be >= 1 and queue >= 0")
        self.engine, self.parallel, self.queue_size = engine, parallel, queue
        self.slots = []
        for _ in range(parallel):
            engine.reset()
            self.slots.append(Slot(engine.state))
        self.group = batch.group_size(engine)
        self._waiting: deque[Job] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._turn = 0
        self._worker = threading.Thread(target=self._run, name="loopcli-serve", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ caller side
    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping or not self._worker.is_alive():
                raise Stopped("the server is shutting down")
            # clients that left while waiting give their place back at once
            self._waiting = deque(j for j in self._waiting if not j.cancel.is_set())
            busy = sum(s.job is not None for s in self.slots)
            if busy >= self.parallel and len(self._waiting) >= self.queue_size:
                raise QueueFull(f"all {self.parallel} slots are busy and {len(self._waiting)} "
                                "requests are waiting")
            self._waiting.append(job)
            self._cv.notify()

    def stats(self) -> dict:
        with self._cv:
            return {"running": not self._stopping and self._worker.is_alive(),
                    "slots": self.parallel, "busy": sum(s.job is not None for s in self.slots),
                    "waiting": len(self._waiting), "queue": self.queue_size}

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            for job in self._waiting:
                job.cancel.set()
            for s in self.slots:
                if s.job:
                    s.job.cancel.set()
            self._cv.notify()
        self._worker.join(timeout)

    # ------------------------------------------------------------------ worker side
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stopping and not self._waiting and not any(s.job for s in self.slots):
                        self._cv.wait()
                    if self._stopping:
                        break
                    self._admit()
                self._drop_cancelled()
                self._prefill_one()
                self._decode()
        except BaseException as exc:  # a bug must not leave clients waiting forever
            self._fail_all(exc)
            raise
        self._fail_all(Stopped("the server is shutting down"))

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            self._stopping = True
            jobs = list(self._waiting) + [s.job for s in self.slots if s.job]
            self._waiting.clear()
        for job in jobs:
            job.emit(("error", exc))
        for s in self.slots:
            s.job = None

    def _admit(self) -> None:
        """Waiting jobs into free slots: the one this prompt continues, else the least recently used."""
        while self._waiting:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self._waiting.popleft()
            if job.cancel.is_set():
                job.emit(("end", "cancelled"))
                continue
            slot = max(free, key=lambda s: (self._reuse(s, job.prompt_ids), -s.used))
            self._turn += 1
            slot.job, slot.used, slot.produced, slot.pending = job, self._turn, 0, None
            slot.history = list(job.prompt_ids)
            self.engine.state = slot.state
            slot.steps = self._prefill(job)

    @staticmethod
    def _reuse(slot: Slot, ids: list[int]) -> int:
        """Prompt tokens a slot would give, counted only when the prompt continues most of what the
        slot holds: a slot is not taken from another conversation for a shared header."""
        common = _common(slot.state.tokens, ids)
        return common if 2 * common >= slot.state.length else 0

    def _prefill(self, job: Job):
        """The engine's prefill steps, in two calls for a PLT model: a PLT state resumes only at a
        snapshot, and a chat's next turn re-tokenizes the reply's first characters together with
        this prompt's last tokens, so a snapshot a few tokens earlier is what the next turn reuses."""
        ids = job.prompt_ids
        cut = len(ids) - BACKOFF if self.engine.cfg.num_loops > 1 and len(ids) > 2 * BACKOFF else len(ids)
        logits = yield from self.engine.prefill_steps(ids[:cut], job.cancel)
        job.cached_tokens = self.engine.last_reused
        if cut < len(ids):
            logits = yield from self.engine.prefill_steps(ids, job.cancel)
        return logits

    def _finish(self, slot: Slot, reason: str) -> None:
        if slot.steps is not None:
            slot.steps.close()
        job, slot.job, slot.steps, slot.pending = slot.job, None, None, None
        job.emit(("end", reason))

    def _fail(self, slot: Slot, exc: Exception) -> None:
        """An error inside one sequence: report it and start that slot afresh."""
        job = slot.job
        slot.job, slot.steps, slot.pending = None, None, None
        self.engine.reset()
        slot.state = self.engine.state
        job.emit(("error", exc))

    def _drop_cancelled(self) -> None:
        for s in self.slots:
            if s.job is not None and s.job.cancel.is_set():
                self._finish(s, "cancelled")

    def _prefill_one(self) -> None:
        slot = next((s for s in self.slots if s.steps is not None), None)
        if slot is None:
            return
        self.engine.state = slot.state
        try:
            next(slot.steps)
            return
        except StopIteration as end:
            logits = end.value
        except Cancelled:
            self._finish(slot, "cancelled")
            return
        except Exception as exc:  # noqa: BLE001  (ModelError, ContextLimitError, bugs: the client hears of it)
            self._fail(slot, exc)
            return
        slot.steps = None
        self._sampled(slot, logits)

    def _sampled(self, slot: Slot, logits) -> None:
        job = slot.job
        token = job.sampler(logits, slot.history)
        slot.history.append(token)
        slot.produced += 1
        job.emit(("token", token))
        if token in job.eos_ids:
            self._finish(slot, "stop")
        elif slot.produced >= job.max_new:
            self._finish(slot, "length")
        else:
            slot.pending = token

    def _decode(self) -> None:
        ready = [s for s in self.slots if s.pending is not None and not s.job.cancel.is_set()]
        for a in range(0, len(ready), self.group):
            group = ready[a:a + self.group]
            try:
                logits = batch.decode_step(self.engine, [s.state for s in group], [s.pending for s in group])
            except Exception as exc:  # noqa: BLE001
                for s in group:
                    self._fail(s, exc)
                continue
            for b, s in enumerate(group):
                self._sampled(s, logits[b])
