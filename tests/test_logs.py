"""Progress lines and worker shutdown output (daq_search.logs)."""

import subprocess
import sys


def test_a_worker_drops_only_the_systemexit_raised_while_ray_stops_it():
    code = """
from daq_search.logs import quiet_worker_shutdown
quiet_worker_shutdown()
quiet_worker_shutdown()
class Raises:
    def __init__(self, error):
        self.error = error
    def __del__(self):
        raise self.error
Raises(SystemExit(1))
Raises(ValueError("a real error"))
print("done")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "done\n"
    assert "ValueError: a real error" in result.stderr and result.stderr.count("Exception ignored") == 1
    assert "SystemExit" not in result.stderr
