"""SummaryWriter for training scripts: TensorBoard's add_scalar/add_scalars/add_text, MLflow-style params and tags.

Events go to this site's parent process, which spools them and forwards them
to the server; the server writes them to MLflow and TensorBoard. The add_*
methods only check their arguments (TypeError/ValueError in the caller's
thread, before anything is queued) and append to a bounded queue; a daemon
thread sends the queue in order, in batches, and retries a failed send with
backoff until the site has it. A full queue drops the newest events and says
so. At interpreter exit a writer that was not closed gets a short flush.

This module must never block training on the network, and never import torch
or mlflow: a tensor's value is read through its .item().
"""

from __future__ import annotations

import atexit
import collections
import itertools
import logging
import math
import numbers
import operator
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, SupportsIndex

from fedsec import limits
from fedsec.errors import FedsecError
from fedsec.tracking.events import (
    MAX_BATCH_BYTES,
    MAX_STEP,
    Event,
    EventKind,
    pack_mapping,
    param_problem,
    quoted,
    size_bound,
    tag_problem,
    text_problem,
)

log = logging.getLogger(__name__)

Transport = Callable[[list[Event]], None]  # sends one batch; returns once the site has it, raises otherwise

SEND_AT = 100  # events waiting that wake the sender before flush_secs are up
RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
EXIT_FLUSH_SECONDS = 5.0  # what a writer that was never closed gets at interpreter exit, all writers together
DROP_WARN_EVERY = 1000  # one warning line per this many dropped events
_JOIN_SECONDS = 1.0

# (kind, tag, step, wall_time, value, text): an event before the queue gives it its seq.
_Item = tuple[EventKind, str, int, float, float, str]


def _send_to_site(events: list[Event]) -> None:
    """The default transport: this site's parent, over the local socket (connects on first use)."""
    from fedsec.client import api  # grpc is loaded with the first batch, not with this module

    api.send_events(events)


class SummaryWriter:
    """Log scalars, texts, params and tags of a training script to the federation's tracking.

    Works in ``with``; otherwise call close(), or let interpreter exit flush it
    (for up to EXIT_FLUSH_SECONDS). A global_step of None is step 0; a walltime
    of None is now. Thread-safe.
    """

    def __init__(
        self,
        log_dir: str | None = None,
        *,
        transport: Transport | None = None,
        flush_secs: float = 0.5,
        max_queue: int = limits.MAX_EVENT_QUEUE,
    ) -> None:
        """log_dir is accepted for compatibility with TensorBoard's writer and ignored: the server chooses where.

        transport defaults to fedsec.client.api.send_events. ValueError for a
        flush_secs that is not a positive number or a max_queue outside 1..MAX_EVENT_QUEUE.
        """
        del log_dir
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, int | float) or not 0 < flush_secs < math.inf:
            raise ValueError(f"SummaryWriter: flush_secs must be a positive number of seconds, got {flush_secs!r}")
        if (
            isinstance(max_queue, bool)
            or not isinstance(max_queue, int)
            or not 1 <= max_queue <= limits.MAX_EVENT_QUEUE
        ):
            raise ValueError(f"SummaryWriter: max_queue must be 1..{limits.MAX_EVENT_QUEUE}, got {max_queue!r}")
        self._sender = _Sender(secrets.token_hex(16), transport or _send_to_site, float(flush_secs), max_queue)
        # An abandoned writer lets its thread send what it queued, then end; the finalizer holds the sender only.
        finalizer = weakref.finalize(self, self._sender.finish)
        finalizer.atexit = False  # _flush_at_exit does that, with a deadline

    @property
    def writer_id(self) -> str:
        """The random id of this writer (32 hex characters); with seq, it names each event."""
        return self._sender.writer

    @property
    def dropped(self) -> int:
        """Events dropped because the queue was full."""
        return self._sender.dropped

    def add_scalar(
        self,
        tag: str,
        scalar_value: Any,
        global_step: SupportsIndex | None = None,
        walltime: float | None = None,
    ) -> None:
        """Queue one value: an int, a float, a numpy number, or anything whose .item() is one (a 0-d tensor).

        TypeError for a value that is not a number (a str, None, a bool), a
        non-integer step; ValueError for NaN or infinity, a bad tag, a negative step.
        """
        _check_tag(tag)
        item = (
            EventKind.SCALAR,
            tag,
            _step(tag, global_step),
            _walltime(tag, walltime),
            _number(tag, scalar_value),
            "",
        )
        self._sender.put([item])

    def add_scalars(
        self,
        main_tag: str,
        tag_scalar_dict: Mapping[str, Any],
        global_step: SupportsIndex | None = None,
        walltime: float | None = None,
    ) -> None:
        """Queue one scalar per key, tagged f"{main_tag}/{key}"; all of them or none (same errors as add_scalar)."""
        if not isinstance(main_tag, str):
            raise TypeError(f"SummaryWriter: main_tag must be a str, not {type(main_tag).__name__}")
        if not isinstance(tag_scalar_dict, Mapping):
            raise TypeError(f"SummaryWriter: tag_scalar_dict must be a mapping, not {type(tag_scalar_dict).__name__}")
        when = _walltime(main_tag, walltime)
        step = _step(main_tag, global_step)
        items: list[_Item] = []
        for key, value in tag_scalar_dict.items():
            if not isinstance(key, str):
                raise TypeError(f"SummaryWriter: the keys of {quoted(main_tag)} must be str, not {type(key).__name__}")
            tag = f"{main_tag}/{key}"
            _check_tag(tag)
            items.append((EventKind.SCALAR, tag, step, when, _number(tag, value), ""))
        self._sender.put(items)

    def add_text(
        self,
        tag: str,
        text_string: str,
        global_step: SupportsIndex | None = None,
        walltime: float | None = None,
    ) -> None:
        """Queue a text of at most MAX_EVENT_TEXT bytes of UTF-8. TypeError for a non-str; ValueError as add_scalar."""
        _check_tag(tag)
        if not isinstance(text_string, str):
            raise TypeError(f"SummaryWriter: the text of {quoted(tag)} must be a str, not {type(text_string).__name__}")
        problem = text_problem(text_string)
        if problem:
            raise ValueError(f"SummaryWriter: tag {quoted(tag)}: {problem}")
        item = (EventKind.TEXT, tag, _step(tag, global_step), _walltime(tag, walltime), 0.0, text_string)
        self._sender.put([item])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Queue the job's params, MLflow style: each value becomes str(value). TypeError for a non-str key,
        ValueError for a key or value over the bounds of fedsec.tracking.events."""
        self._sender.put(_mapping_items(EventKind.PARAMS, params, "log_params"))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Queue tags for the job's run, MLflow style: each value becomes str(value). Errors as log_params."""
        self._sender.put(_mapping_items(EventKind.TAGS, tags, "set_tags"))

    def flush(self, timeout: float | None = 30.0) -> None:
        """Return once every event queued before the call was handed to the site.

        FedsecError when that takes longer than timeout seconds (None: wait as
        long as it takes); ValueError when the writer is closed.
        """
        if self._sender.closed:
            raise ValueError("SummaryWriter is closed")
        self._sender.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then stop the sending thread; later calls but close() raise ValueError.

        FedsecError when the flush timed out (the writer is closed all the same).
        """
        self._sender.close(timeout)

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the script's own error is the one to see
            self.close()
        except FedsecError as err:
            log.warning("fedsec: SummaryWriter not flushed: %s", err)


def _check_tag(tag: object) -> None:
    if not isinstance(tag, str):
        raise TypeError(f"SummaryWriter: a tag must be a str, not {type(tag).__name__}")
    problem = tag_problem(tag)
    if problem:
        raise ValueError(f"SummaryWriter: tag {quoted(tag)}: {problem}")


def _number(tag: str, value: Any) -> float:
    """value as a finite float; TypeError when it is not a number, ValueError when it is not finite."""
    if type(value) is float:
        number = value
    else:
        if value is None or isinstance(value, bool | str | bytes):
            raise TypeError(f"SummaryWriter: the value of {quoted(tag)} must be a number, not {type(value).__name__}")
        if not isinstance(value, numbers.Real):
            value = _item(tag, value)
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"SummaryWriter: the value of {quoted(tag)} is too large for a float") from None
    if not math.isfinite(number):
        raise ValueError(f"SummaryWriter: the value of {quoted(tag)} is {number}, not a finite number")
    return number


def _item(tag: str, value: Any) -> int | float:
    """The number inside a 0-d tensor or array (its .item())."""
    read = getattr(value, "item", None)
    if not callable(read):
        raise TypeError(f"SummaryWriter: the value of {quoted(tag)} must be a number, not {type(value).__name__}")
    try:
        item = read()
    except (TypeError, ValueError, RuntimeError) as exc:  # numpy: ValueError; torch: RuntimeError (not one element)
        raise TypeError(f"SummaryWriter: the value of {quoted(tag)} is not a single number: {exc}") from None
    if isinstance(item, bool) or not isinstance(item, int | float):
        raise TypeError(f"SummaryWriter: the value of {quoted(tag)} must be a number, not {type(item).__name__}")
    return item


def _step(tag: str, step: Any) -> int:
    if step is None:
        return 0
    if isinstance(step, bool):
        raise TypeError(f"SummaryWriter: the step of {quoted(tag)} must be an int, not bool")
    try:
        number = operator.index(step)  # int, numpy integers, integer tensors
    except TypeError:
        raise TypeError(f"SummaryWriter: the step of {quoted(tag)} must be an int, not {type(step).__name__}") from None
    if not 0 <= number <= MAX_STEP:
        raise ValueError(f"SummaryWriter: the step of {quoted(tag)} is {number}, not 0..2**63-1")
    return number


def _walltime(tag: str, walltime: Any) -> float:
    if walltime is None:
        return time.time()
    if isinstance(walltime, bool) or not isinstance(walltime, numbers.Real):
        raise TypeError(f"SummaryWriter: the walltime of {quoted(tag)} must be a number, not {type(walltime).__name__}")
    try:
        when = float(walltime)
    except OverflowError:
        when = math.inf
    if not math.isfinite(when):
        raise ValueError(f"SummaryWriter: the walltime of {quoted(tag)} is {walltime}, not a finite number")
    return when


def _mapping_items(kind: EventKind, mapping: Mapping[str, Any], method: str) -> list[_Item]:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"SummaryWriter.{method}: expected a mapping, not {type(mapping).__name__}")
    pairs: list[tuple[str, str]] = []
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"SummaryWriter.{method}: keys must be str, not {type(key).__name__} ({key!r})")
        text = value if isinstance(value, str) else str(value)
        problem = param_problem(key, text)
        if problem:
            raise ValueError(f"SummaryWriter.{method}: {problem}")
        pairs.append((key, text))
    now = time.time()
    return [(kind, "", 0, now, 0.0, text) for text in pack_mapping(pairs)]


class _Sender:
    """The queue of one writer and the thread that empties it.

    It holds no reference to its SummaryWriter, so an abandoned writer can be
    collected (its finalizer calls finish()). Events stay in the queue until the
    transport took them: the queue bound counts the batch in flight too.
    """

    def __init__(self, writer: str, transport: Transport, flush_secs: float, max_queue: int) -> None:
        self.writer = writer
        self._transport = transport
        self._flush_secs = flush_secs
        self._max_queue = max_queue
        self._cond = threading.Condition()
        self._queue: collections.deque[Event] = collections.deque()
        self.queued = 0  # events ever queued: the next seq
        self.dropped = 0
        self._delivered = 0  # events the transport took: the queue holds seqs delivered..queued-1
        self._flush_target = 0
        self.closed = False  # no more events
        self._finishing = False  # the writer was collected: send what is queued, then end
        self._stopping = False  # end now
        self._ended = False
        self._last_error = ""
        self._thread = threading.Thread(target=self._run, name=f"fedsec-summary-writer-{writer[:8]}", daemon=True)
        with _live_lock:
            _live.add(self)
        self._thread.start()

    def put(self, items: list[_Item]) -> None:
        """Give the items their seqs and queue them; drop (and count) those that find the queue full."""
        warn: list[tuple[str, int]] = []
        with self._cond:
            if self.closed:
                raise ValueError("SummaryWriter is closed")
            for kind, tag, step, wall_time, value, text in items:
                if len(self._queue) >= self._max_queue:
                    self.dropped += 1
                    if (self.dropped - 1) % DROP_WARN_EVERY == 0:
                        warn.append((tag or kind.value, self.dropped))
                    continue
                self._queue.append(Event(self.writer, self.queued, kind, tag, step, wall_time, value, text))
                self.queued += 1
            if len(self._queue) >= SEND_AT:
                self._cond.notify_all()
        for tag, dropped in warn:
            log.warning(
                "fedsec: SummaryWriter queue full (%d events): dropped an event of tag=%s, %d dropped so far",
                self._max_queue,
                tag,
                dropped,
            )

    def flush(self, timeout: float | None) -> None:
        with self._cond:
            target = self.queued
            if self._delivered >= target:
                return
            self._flush_target = max(self._flush_target, target)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._delivered >= target or self._ended, timeout)
            if self._delivered < target:
                error = f" (last error: {self._last_error})" if self._last_error else ""
                waited = "" if timeout is None else f" within {timeout:g} s"
                raise FedsecError(
                    f"SummaryWriter: {target - self._delivered} events not handed to the site{waited}{error}"
                )

    def close(self, timeout: float | None) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            with _live_lock:
                _live.discard(self)
            if threading.current_thread() is not self._thread:
                self._thread.join(_JOIN_SECONDS)

    def finish(self) -> None:
        """The writer is gone: send what is queued, then end the thread (without waiting for it)."""
        with self._cond:
            self.closed = True
            self._finishing = True
            self._cond.notify_all()

    def _due(self) -> bool:
        # _flush_target > _delivered implies a non-empty queue: delivered + len(queue) == queued.
        return self._stopping or self._finishing or len(self._queue) >= SEND_AT or self._flush_target > self._delivered

    def _run(self) -> None:
        try:
            self._send_loop()
        finally:
            with _live_lock:
                _live.discard(self)
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _send_loop(self) -> None:
        delay = RETRY_MIN_SECONDS
        failures = 0
        while True:
            with self._cond:
                self._cond.wait_for(self._due, timeout=self._flush_secs)
                if self._stopping or (self._finishing and not self._queue):
                    return
                if not self._queue:
                    continue
                batch = self._take()
            try:
                self._transport(batch)
            except Exception as exc:  # noqa: BLE001 - the thread's top level: the batch is kept, logged and retried
                failures += 1
                if failures == 1:
                    log.warning("fedsec: SummaryWriter: events not sent yet, retrying: %s", exc)
                else:
                    log.debug("fedsec: SummaryWriter: send failed (%d times): %s", failures, exc)
                with self._cond:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    if self._cond.wait_for(lambda: self._stopping, timeout=delay):
                        return
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            if failures:
                log.info("fedsec: SummaryWriter: events sent again after %d failed attempts", failures)
            failures, delay = 0, RETRY_MIN_SECONDS
            with self._cond:
                for _ in batch:
                    self._queue.popleft()
                self._delivered += len(batch)
                self._last_error = ""
                self._cond.notify_all()

    def _take(self) -> list[Event]:
        """The oldest queued events that fit in one EventBatch (they stay queued until delivered)."""
        batch: list[Event] = []
        size = 0
        for event in itertools.islice(self._queue, limits.MAX_EVENTS_PER_BATCH):
            size += size_bound(event)
            if batch and size > MAX_BATCH_BYTES:
                break
            batch.append(event)
        return batch


_live: set[_Sender] = set()  # senders whose thread runs, for the flush at exit
_live_lock = threading.Lock()


def _flush_at_exit() -> None:
    """Give the writers a script did not close EXIT_FLUSH_SECONDS, together, to hand their events to the site."""
    deadline = time.monotonic() + EXIT_FLUSH_SECONDS
    with _live_lock:
        senders = list(_live)
    for sender in senders:
        try:
            sender.flush(max(0.0, deadline - time.monotonic()))
        except FedsecError as exc:
            log.warning("fedsec: at exit: %s", exc)


atexit.register(_flush_at_exit)
