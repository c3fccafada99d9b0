"""Ctrl-C and `kill` delivered between TensorFlow's steps, never inside its ops.

Python raises KeyboardInterrupt wherever the main thread happens to be, and TensorFlow's
op wrappers are not safe against that: an interrupt that lands while `fit` makes an
epoch's data iterator (`anonymous_iterator_v3`, `make_iterator`) corrupts the heap, and
the process dies of a glibc abort or SIGSEGV before anything can mark its MLflow run
KILLED (the interrupted-sweep test: 5 runs in 8). So inside a `DeferredInterrupts` block
a signal is only noted, and the handler it would have met runs from a Keras callback at
the end of the step under way, or as the block ends: places where an exception is an
ordinary error. A second signal is not deferred, so a stuck process still stops at once,
unless its handler is `patient`: SLURM's (sweeps.cluster) repeats SIGTERM by itself and
kills the job after its KillWait. SIGUSR1 and SIGUSR2 are deferred too where a handler
of Python's is set: submitit's jobs get USR2 before their time limit.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import keras

_NOTE = b"\nmnist-exp: stopping after the current step (interrupt again to stop at once)\n"


class DeferredInterrupts(keras.callbacks.Callback):
    """A context manager, and the callback that delivers what it deferred: pass it to
    `fit` (or `evaluate`, `predict`) inside its `with` block. Signals whose handler is not
    a Python function (ignored, default) are left alone, as is everything outside the
    main thread, where Python cannot set handlers."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (
            signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)):
        super().__init__()
        self._signals = signals
        self._handlers: dict[int, Any] = {}
        self._pending: int | None = None

    def __enter__(self) -> DeferredInterrupts:
        if threading.current_thread() is threading.main_thread():
            for number in self._signals:
                handler = signal.getsignal(number)
                if callable(handler):
                    self._handlers[number] = handler
                    signal.signal(number, self._note)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        handlers, self._handlers = self._handlers, {}
        for number, handler in handlers.items():
            signal.signal(number, handler)
        pending, self._pending = self._pending, None
        if pending is not None and kind is None:  # it came after the last step
            handlers[pending](pending, None)

    def deliver(self) -> None:
        """Run the noted signal's own handler now (it usually raises KeyboardInterrupt)."""
        if self._pending is not None:
            number, self._pending = self._pending, None
            self._handlers[number](number, None)

    def _note(self, number: int, frame: FrameType | None) -> None:
        handler = self._handlers[number]
        if self._pending is not None:
            if getattr(handler, "patient", False):  # its sender stops the process if need be
                return
            handler(number, frame)  # asked twice: stop at once
        self._pending = number
        os.write(2, getattr(handler, "note", _NOTE))  # not print(): it may cut another write

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.deliver()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.deliver()

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.deliver()

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.deliver()
