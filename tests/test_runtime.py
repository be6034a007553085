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


def test_teacher_task_takes_the_cpus_of_all_concurrent_trials_up_to_the_largest_node(monkeypatch):
    import ray

    from daq_search.search.run import teacher_cpus

    nodes = [
        {"Alive": True, "Resources": {"CPU": 4.0}},
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 64.0}},
        {"Alive": True, "Resources": {"GPU": 1.0}},
    ]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert teacher_cpus(1.0, 2) == 2.0
    assert teacher_cpus(2.0, 8) == 8.0  # 16 wanted, the largest live node has 8 (the dead one's 64 do not count)
    assert teacher_cpus(12.0, 2) == 12.0  # never fewer than one trial reserves


def test_an_unaugmented_teacher_gives_its_cpus_to_torch_threads():
    from daq_search.config import JobSpec
    from daq_search.search.run import teacher_loader_workers

    plain = JobSpec(name="t")
    assert teacher_loader_workers(4.0, plain) == 0
    augmented = JobSpec.model_validate({"name": "t", "teacher": {"augment": "trivialaugment"}})
    assert teacher_loader_workers(4.0, augmented) == 3  # one per CPU beyond the first, as for trials
    pinned = JobSpec.model_validate({"name": "t", "resources": {"loader_workers": 2}})
    assert teacher_loader_workers(4.0, pinned) == 2
