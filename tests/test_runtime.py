"""The embedded Ray session's workers: the CPU priority they train at."""

import os

import pytest

from daq_search import runtime


@pytest.mark.slow
def test_embedded_ray_workers_run_at_the_drivers_cpu_priority():
    import ray

    @ray.remote
    def niceness() -> int:
        return os.nice(0)

    with runtime.ray_session(num_cpus=1):
        assert ray.get(niceness.remote()) == os.nice(0)  # Ray's own default would be the driver's + 15
