"""The suite's deterministic mode (DAQ_TEST_DETERMINISTIC=1, see tests/conftest.py) reaches every process it starts:
the start-up hook switches torch's deterministic algorithms on exactly when the variable is 1, and Ray workers follow
the test process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HOOK = Path(__file__).resolve().parent / "deterministic"


PROBE = "import sys; early = 'torch' in sys.modules; import torch; print(early, torch.are_deterministic_algorithms_enabled())"


@pytest.mark.parametrize(("value", "expected"), [("1", "False True"), ("0", "False False")])
def test_start_up_hook_follows_the_variable_without_importing_torch_itself(value, expected):
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(HOOK), "DAQ_TEST_DETERMINISTIC": value},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


@pytest.mark.slow
def test_ray_workers_run_as_the_test_process_does():
    import ray

    from daq_search.runtime import ray_session

    @ray.remote
    def deterministic() -> bool:
        import torch

        return torch.are_deterministic_algorithms_enabled()

    with ray_session(num_cpus=1):
        assert ray.get(deterministic.remote()) == torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == (os.environ.get("DAQ_TEST_DETERMINISTIC") == "1")
