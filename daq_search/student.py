"""The fake-quantized student built from the teacher."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.data import Subset

from .config import QuantConfig, StudentConfig
from .data import DataBundle
from .kd import eval_loader
from .models import create_for
from .quant import calibrate, quantize


def build_student(
    student: StudentConfig, quant: QuantConfig, bundle: DataBundle, teacher: nn.Module, seed: int = 0
) -> nn.Module:
    """The fake-quantized student: the teacher's weights (``init: teacher``) or a fresh seeded model, then
    ``quantize`` and step-size calibration on a fixed clean batch of training images (identical on every rank)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(teacher) if student.init == "teacher" else create_for(student.model, student.width, bundle)
    model = quantize(model, quant.wbits, quant.abits, method=quant.method, first_last_bits=quant.first_last_bits)
    picks = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0))[:256].tolist()
    calibration = next(iter(eval_loader(Subset(bundle.train, picks), bundle, batch_size=256)))[0]
    calibrate(model, calibration)
    return model.train()
