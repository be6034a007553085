"""daq-search: pick the data augmentation for quantization-aware knowledge distillation, then train with it."""

__version__ = "0.1.0"
