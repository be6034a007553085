"""Imported at start-up by every Python process whose path holds this folder (tests/conftest.py puts it on
PYTHONPATH when DAQ_TEST_DETERMINISTIC=1): Ray workers and CLI subprocesses then run torch with deterministic
algorithms, as the test process does. Torch is not imported here: the switch is made right after the process
imports torch itself, so a command that never needs torch still starts without it."""

import importlib.abc
import importlib.machinery
import os
import sys


class _DeterministicTorch(importlib.abc.MetaPathFinder):
    """Finds ``torch`` as usual and switches its deterministic algorithms on once the module has loaded."""

    def find_spec(self, name, path, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.use_deterministic_algorithms(True)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("DAQ_TEST_DETERMINISTIC") == "1":
    sys.meta_path.insert(0, _DeterministicTorch())
