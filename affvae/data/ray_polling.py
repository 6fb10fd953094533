"""Ray Data's scheduling loop, made to wait rather than spin while its stream is full.

The streaming executor runs a scheduling loop in a thread of the process that
iterates a Dataset (here: each training rank).  Each step waits for its tasks with
``ray.wait(timeout=0.1)``; but once the stream is ahead of its consumer (the buffer
of rendered batches full, tasks done or holding outputs nobody may read yet),
``ray.wait`` returns at once or has nothing to wait for, and the loop spins:
measured on 2 cores with two Ray Train ranks, each rank's executor thread took
30-75% of a core and held the GIL between the training step's torch ops (py-spy:
``StreamingExecutor._scheduling_loop_step``, active+gil), so the streamed ranks
trained at half the in-memory rate (Ray 2.60).

:class:`WaitWhenIdle`, registered through Ray Data's execution callbacks, sleeps
:data:`IDLE_SLEEP_S` after each step that changed nothing (no task submitted or
finished, no output made, none taken by the consumer): the consumer frees buffer
space once per training batch (tens of milliseconds at least), so the stream loses
nothing, and the trainer gets its core and its GIL back.
"""

from __future__ import annotations

import time

from ray.data import DataContext
from ray.data._internal.execution.execution_callback import ExecutionCallback

#: seconds a scheduling step that changed nothing waits before the next
IDLE_SLEEP_S = 0.02
#: the operator counters whose change is progress
_PROGRESS = ("num_tasks_submitted", "num_tasks_finished", "num_task_outputs_generated",
             "num_outputs_taken", "num_external_outqueue_blocks")


def progress(executor) -> tuple | None:
    """The executor's operator counters, or None where its layout is not Ray 2.60's."""
    topology = getattr(executor, "_topology", None)
    if topology is None:
        return None
    try:
        return tuple(getattr(op.metrics, name) for op in topology for name in _PROGRESS)
    except AttributeError:
        return None


class WaitWhenIdle(ExecutionCallback):
    """Sleep :data:`IDLE_SLEEP_S` after a scheduling step that made no progress."""

    def __init__(self) -> None:
        self._last: tuple | None = None

    def on_execution_step(self, executor) -> None:
        now = progress(executor)
        if now is not None and now == self._last:
            time.sleep(IDLE_SLEEP_S)
        self._last = now


def install(context: DataContext | None = None) -> None:
    """Register :class:`WaitWhenIdle` in ``context`` (default this process's current one), once."""
    context = context or DataContext.get_current()
    if WaitWhenIdle not in context.custom_execution_callback_classes:
        context.custom_execution_callback_classes.append(WaitWhenIdle)
