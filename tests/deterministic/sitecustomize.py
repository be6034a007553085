"""Imported at start-up by every Python process whose path holds this folder (tests/conftest.py puts it on
PYTHONPATH when DAQ_TEST_DETERMINISTIC=1): Ray workers and CLI subprocesses then run torch with deterministic
algorithms, as the test process does."""

import os

if os.environ.get("DAQ_TEST_DETERMINISTIC") == "1":
    import torch

    torch.use_deterministic_algorithms(True)
