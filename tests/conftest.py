"""Shared pytest set-up: one torch thread per test process, so parallel work on 2 cores stays fair."""

import torch

torch.set_num_threads(1)
