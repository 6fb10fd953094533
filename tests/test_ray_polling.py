"""Ray Data's scheduling loop waits, not spins, while a bounded stream is full."""

import time

import numpy as np
import pytest


def _steps_per_second(wait: bool) -> float:
    """Scheduling steps per second of a stream whose consumer is slower than its tasks."""
    import ray.data
    from ray.data import DataContext, ExecutionResources
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    from affvae.data import ray_polling

    steps: list[float] = []

    class Count(ExecutionCallback):
        def on_execution_step(self, executor):
            steps.append(time.perf_counter())

    ctx = DataContext.get_current()
    saved = (list(ctx.custom_execution_callback_classes), ctx.execution_options.resource_limits)
    try:
        ctx.custom_execution_callback_classes[:] = [Count]
        if wait:
            ray_polling.install(ctx)
        # blocks of 1.25 MiB against a 2 MiB buffer: the stream is full after two
        ctx.execution_options.resource_limits = ExecutionResources(object_store_memory=2 * 2**20)
        ds = ray.data.range(300, override_num_blocks=30).map_batches(
            lambda b: {"x": np.zeros((len(b["id"]), 2**15), np.float32)}, batch_size=None)
        start = None
        for _ in ds.iter_batches(batch_size=10, prefetch_batches=0):
            start = start or time.perf_counter()
            time.sleep(0.05)  # the consumer: a training step
        end = time.perf_counter()
    finally:
        ctx.custom_execution_callback_classes[:] = saved[0]
        ctx.execution_options.resource_limits = saved[1]
    return sum(start <= t <= end for t in steps) / (end - start)


@pytest.mark.slow
def test_a_full_stream_waits_for_its_consumer_instead_of_spinning(ray_cluster):
    from affvae.data import ray_polling

    spinning, waiting = _steps_per_second(False), _steps_per_second(True)
    # one step per idle sleep, and a few per event: 20 batches taken and 20 tasks a second
    assert waiting < 1 / ray_polling.IDLE_SLEEP_S + 100, (spinning, waiting)
    assert spinning > 4 * waiting, (spinning, waiting)  # Ray 2.60's own loop spins: the reason for this
