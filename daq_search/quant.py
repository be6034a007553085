"""Quantization-aware training by fake quantization, and the integer artifact of a trained low-bit model.

Two methods behind one interface (``QUANT_METHODS``):

- ``lsq``: LSQ (Esser et al., ICLR 2020) for weights (signed, one step per output channel) and activations (one
  step per layer, signedness from the first batch). ``q(x) = round(clamp(x / s, Qn, Qp)) * s`` with a learned step
  ``s``, straight-through rounding and the step gradient scaled by ``1 / sqrt(numel_per_step * Qp)``, where
  ``numel_per_step`` counts the elements of the quantized tensor (batch included for activations) sharing one step.
- ``dorefa_pact``: DoReFa weights (Zhou et al. 2016) and PACT activations (Choi et al. 2018). DoReFa maps
  ``tanh(w) / (2 max|tanh(w)|) + 1/2`` to ``2^b`` uniform levels and back to ``[-1, 1]``, here rescaled by
  ``max|w|`` (not learned) so the quantized weights keep the size of the float weights; the levels are then
  ``(n + 1/2) * step`` with integers ``n`` in ``[-2^(b-1), 2^(b-1) - 1]`` and ``step = 2 max|w| / (2^b - 1)``.
  PACT clips activations to ``[0, alpha]`` (or ``[-alpha, alpha]`` when the first batch has negative values) with
  a learned ``alpha`` initialised to ``max|x|`` of the first batch, and rounds to ``2^b`` levels; the gradient of
  ``alpha`` is the PACT one (1 where ``x >= alpha``, -1 where ``x <= -alpha`` when signed).

Level ranges: signed ``Qn = -2^(b-1), Qp = 2^(b-1) - 1``; unsigned ``Qn = 0, Qp = 2^b - 1``.

The integer artifact (``export_int_state``) stores per quantized layer ``weight = (weight_int + weight_offset) *
weight_step`` (offset 0 for LSQ, 1/2 for DoReFa) and the activation grid ``round(clamp(x / act_step, Qn, Qp)) *
act_step``; ``load_int_state`` rebuilds the same function in a fresh ``quantize()``d model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from daq_search.errors import DaqSearchError

QUANT_METHODS = ("lsq", "dorefa_pact")
INT_STATE_FORMAT = "daq_search.int_state.v1"
MIN_BITS, MAX_BITS = 2, 8
MIN_STEP = 1e-8  # floor of an initial step or clip, so an all-zero first batch cannot divide by zero


def level_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range ``(Qn, Qp)`` of a ``bits``-bit grid: signed two's complement or unsigned."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Exactly ``value`` in the forward pass, the gradient of ``surrogate`` in the backward pass."""
    return value.detach() + (surrogate - surrogate.detach())


class _RoundSTE(torch.autograd.Function):
    """Round to the nearest integer in the forward pass, the identity in the backward pass: one pass over the
    tensor, where ``_straight_through(x.round(), x)`` takes three (half the time of a quantized student's
    evaluation)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.round()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _ScaledGradient(torch.autograd.Function):
    """Exactly ``x`` in the forward pass, the incoming gradient times ``scale`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer with an identity gradient."""
    return _RoundSTE.apply(x)


def _along(step: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """View a 1-D step of length 1 or C so it broadcasts along dimension ``dim`` of an ``ndim``-D tensor."""
    return step.view([-1 if d == dim else 1 for d in range(ndim)])


class _DataInitQuantizer(nn.Module):
    """Base of quantizers that initialise from their first input; keeps ``initialized`` and ``signed`` buffers.

    Python mirrors of the two flags avoid a device sync on every forward; they follow ``load_state_dict``.
    """

    def __init__(self, bits: int, signed: bool | None) -> None:
        super().__init__()
        self.bits = bits
        self.auto_sign = signed is None
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed", torch.tensor(bool(signed)))
        self._initialized = False
        self._signed = bool(signed)

    @property
    def is_initialized(self) -> bool:
        """Whether the step (or clip) has been set from data or loaded."""
        return self._initialized

    @property
    def is_signed(self) -> bool:
        """Whether the grid is signed (decided by the first batch when constructed with ``signed=None``)."""
        return self._signed

    @property
    def levels(self) -> tuple[int, int]:
        """``(Qn, Qp)`` of this quantizer's grid."""
        return level_range(self.bits, self._signed)

    def _set_flags(self, signed: bool) -> None:
        self.signed.fill_(signed)
        self.initialized.fill_(True)
        self._signed, self._initialized = signed, True

    def _decide_sign(self, x: torch.Tensor) -> bool:
        return bool(x.min() < 0) if self.auto_sign else self._signed

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized, self._signed = bool(self.initialized), bool(self.signed)

    def extra_repr(self) -> str:
        sign = "auto" if self.auto_sign else ("signed" if self._signed else "unsigned")
        return f"bits={self.bits}, {sign}"


class LSQQuantizer(_DataInitQuantizer):
    """LSQ fake quantizer: ``round(clamp(x / step, Qn, Qp)) * step`` with a learned ``step``.

    ``signed=None`` decides the sign from the first batch (signed iff its minimum is negative). With
    ``per_channel`` the step is a vector over dimension ``channel_dim`` (its length is set by the first input or by
    a loaded state dict), otherwise a single value. On the first forward ``step = 2 mean|x| / sqrt(Qp)``.
    """

    def __init__(self, bits: int, signed: bool | None, per_channel: bool = False, channel_dim: int = 0) -> None:
        super().__init__(bits, signed)
        self.per_channel = per_channel
        self.channel_dim = channel_dim
        self.step = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized ``x`` (same shape); initialises the step from ``x`` on the first call."""
        if not self._initialized:
            self.initialize(x)
        qn, qp = self.levels
        if not torch.is_grad_enabled():  # evaluation: the same operations in place, half the time
            step = _along(self.step, self.channel_dim, x.dim())
            return torch.clamp(x / step, qn, qp).round_().mul_(step)
        grad_scale = 1.0 / math.sqrt(x.numel() / self.step.numel() * qp)
        step = _along(_ScaledGradient.apply(self.step, grad_scale), self.channel_dim, x.dim())
        return _round_ste(torch.clamp(x / step, qn, qp)) * step

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set signedness (if automatic) and ``step = 2 mean|x| / sqrt(Qp)`` (per channel if ``per_channel``)."""
        signed = self._decide_sign(x)
        magnitude = x.detach().abs().float()
        if self.per_channel:
            mean = magnitude.transpose(0, self.channel_dim).reshape(x.shape[self.channel_dim], -1).mean(dim=1)
        else:
            mean = magnitude.mean().reshape(1)
        qp = level_range(self.bits, signed)[1]
        self.set_state((2 * mean / math.sqrt(qp)).clamp_min(MIN_STEP), signed)

    @torch.no_grad()
    def set_state(self, step: torch.Tensor, signed: bool) -> None:
        """Overwrite the step (1-D, length 1 or one per channel) and the signedness; marks it initialised."""
        self.step.data = step.detach().to(device=self.step.device, dtype=self.step.dtype).reshape(-1).clone()
        self._set_flags(signed)

    def integer_weight(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(levels int8, step 1-D, offset 0.0)`` with ``forward(weight) == (levels + offset) * step``."""
        qn, qp = self.levels
        step = self.step.detach()
        levels = torch.clamp(weight.detach() / _along(step, self.channel_dim, weight.dim()), qn, qp).round()
        return levels.to(torch.int8), step.clone(), 0.0

    def effective_step(self) -> torch.Tensor:
        """The step of the grid, 1-D."""
        return self.step.detach().clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        loaded_step = state_dict.get(prefix + "step")
        if loaded_step is not None and loaded_step.shape != self.step.shape:
            self.step.data = torch.empty(loaded_step.shape, device=self.step.device, dtype=self.step.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PACTQuantizer(_DataInitQuantizer):
    """PACT activation quantizer: clip to ``[0, alpha]`` (signed: ``[-alpha, alpha]``), round to ``2^b`` levels.

    ``alpha`` is learned and initialised to ``max|x|`` of the first batch; ``signed=None`` takes the sign from it.
    The grid step is ``alpha / (2^b - 1)`` unsigned and ``alpha / 2^(b-1)`` signed (levels clamped to ``[Qn, Qp]``).
    """

    def __init__(self, bits: int, signed: bool | None) -> None:
        super().__init__(bits, signed)
        self.alpha = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized ``x`` (same shape); initialises ``alpha`` from ``x`` on the first call."""
        if not self._initialized:
            self.initialize(x)
        alpha = self.alpha
        lower = torch.where(x <= -alpha, -alpha, x) if self._signed else F.relu(x)
        clipped = torch.where(x >= alpha, alpha, lower)
        step = self.effective_step()
        qn, qp = self.levels
        levels = torch.clamp(torch.round(clipped.detach() / step), qn, qp)
        return _straight_through(levels * step, clipped)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set signedness (if automatic) and ``alpha = max|x|``."""
        signed = self._decide_sign(x)
        self.alpha.data = x.detach().abs().max().float().clamp_min(MIN_STEP).reshape(1).to(self.alpha.device)
        self._set_flags(signed)

    def effective_step(self) -> torch.Tensor:
        """The step of the grid, ``alpha / (2^b - 1)`` unsigned or ``alpha / 2^(b-1)`` signed, 1-D."""
        return self.alpha.detach() / (2 ** (self.bits - 1) if self._signed else 2**self.bits - 1)


class DoReFaWeightQuantizer(nn.Module):
    """DoReFa weight quantizer rescaled by ``max|w|``: ``(n + 1/2) * step`` with ``n`` a signed ``b``-bit integer."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def _levels_and_step(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top = 2**self.bits - 1
        squashed = torch.tanh(weight)
        unit = squashed / (2 * squashed.abs().max().clamp_min(MIN_STEP)) + 0.5
        step = (2 * weight.detach().abs().max() / top).reshape(1)
        return _round_ste(unit * top), step

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Fake-quantized weight (same shape), levels symmetric around zero."""
        levels, step = self._levels_and_step(weight)
        return (levels - (2**self.bits - 1) / 2) * step

    def integer_weight(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(n int8, step 1-D, offset 0.5)`` with ``forward(weight) == (n + offset) * step``."""
        levels, step = self._levels_and_step(weight.detach())
        return (levels - 2 ** (self.bits - 1)).to(torch.int8), step, 0.5

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class FixedGridQuantizer(nn.Module):
    """Quantizer on a fixed grid ``(round(clamp(x / step - offset, Qn, Qp)) + offset) * step`` (nothing learned).

    ``load_int_state`` puts it in DoReFa/PACT layers, whose own parametrisation cannot be recovered from integers.
    """

    def __init__(self, bits: int, signed: bool, step: torch.Tensor, offset: float = 0.0, channel_dim: int = 0) -> None:
        super().__init__()
        self.bits = bits
        self.is_signed = signed
        self.offset = offset
        self.channel_dim = channel_dim
        self.register_buffer("step", step.detach().float().reshape(-1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded onto the grid (same shape), straight-through gradient inside the range."""
        qn, qp = level_range(self.bits, self.is_signed)
        step = _along(self.step, self.channel_dim, x.dim())
        return (_round_ste(torch.clamp(x / step - self.offset, qn, qp)) + self.offset) * step

    def integer_weight(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(n int8, step 1-D, offset)`` with ``forward(weight) == (n + offset) * step``."""
        qn, qp = level_range(self.bits, self.is_signed)
        step = _along(self.step, self.channel_dim, weight.dim())
        levels = torch.clamp(weight.detach() / step - self.offset, qn, qp).round()
        return levels.to(torch.int8), self.step.clone(), self.offset

    def effective_step(self) -> torch.Tensor:
        """The step of the grid, 1-D."""
        return self.step.clone()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, {'signed' if self.is_signed else 'unsigned'}, offset={self.offset}"


def _weight_quantizer(method: str, bits: int) -> nn.Module:
    if method == "lsq":
        return LSQQuantizer(bits, signed=True, per_channel=True, channel_dim=0)
    return DoReFaWeightQuantizer(bits)


def _act_quantizer(method: str, bits: int) -> nn.Module:
    if method == "lsq":
        return LSQQuantizer(bits, signed=None)
    return PACTQuantizer(bits, signed=None)


def _attach_quantizers(layer: nn.Module, wbits: int, abits: int, method: str) -> None:
    """Give a Conv2d/Linear its bit widths and its weight and input-activation quantizers."""
    layer.wbits, layer.abits, layer.method = wbits, abits, method
    layer.weight_quantizer = _weight_quantizer(method, wbits)
    layer.act_quantizer = _act_quantizer(method, abits)


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight and input are fake-quantized to ``wbits`` / ``abits`` before the convolution."""

    def __init__(self, *args, wbits: int, abits: int, method: str = "lsq", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _attach_quantizers(self, wbits, abits, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution of the quantized input with the quantized weight (float bias unchanged)."""
        return self._conv_forward(self.act_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose weight and input are fake-quantized to ``wbits`` / ``abits`` before the product."""

    def __init__(self, *args, wbits: int, abits: int, method: str = "lsq", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _attach_quantizers(self, wbits, abits, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Affine map of the quantized input with the quantized weight (float bias unchanged)."""
        return F.linear(self.act_quantizer(x), self.weight_quantizer(self.weight), self.bias)


QUANT_LAYER_TYPES = (QuantConv2d, QuantLinear)


def _check_bits(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        raise DaqSearchError(f"{field}: {value!r} is out of range; allowed {MIN_BITS}..{MAX_BITS}")


def _quantized_copy(layer: nn.Module, wbits: int, abits: int, method: str) -> nn.Module:
    """A QuantConv2d / QuantLinear sharing ``layer``'s weight and bias parameters."""
    options = dict(bias=layer.bias is not None, device="meta", wbits=wbits, abits=abits, method=method)
    if isinstance(layer, nn.Conv2d):
        quantized: nn.Module = QuantConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            padding_mode=layer.padding_mode,
            **options,
        )
    else:
        quantized = QuantLinear(layer.in_features, layer.out_features, **options)
    quantized.weight = layer.weight
    quantized.bias = layer.bias
    quantized.weight_quantizer.to(layer.weight.device)
    quantized.act_quantizer.to(layer.weight.device)
    return quantized.train(layer.training)


def quantize(
    model: nn.Module, wbits: int, abits: int, method: str = "lsq", first_last_bits: int | None = 8
) -> nn.Module:
    """Swap every ``nn.Conv2d`` / ``nn.Linear`` of ``model`` in place for a fake-quantized copy; return ``model``.

    Weights and biases are kept (the float model is the start point). The first conv and the last linear (in module
    registration order) get ``first_last_bits`` for weights and activations, or stay full precision when it is
    ``None``. Quantizer steps initialise on the next forward (see ``calibrate``).
    """
    _check_bits("quant.wbits", wbits)
    _check_bits("quant.abits", abits)
    if first_last_bits is not None:
        _check_bits("quant.first_last_bits", first_last_bits)
    if method not in QUANT_METHODS:
        raise DaqSearchError(f"quant.method: unknown method {method!r}; allowed: {', '.join(QUANT_METHODS)}")
    if quantized_layers(model):
        raise DaqSearchError("quant: the model is already quantized; quantize a full-precision model")
    layers = [(name, m) for name, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    convs = [name for name, m in layers if type(m) is nn.Conv2d]
    linears = [name for name, m in layers if type(m) is nn.Linear]
    edge_layers = set(convs[:1] + linears[-1:])
    for name, layer in layers:
        if name in edge_layers:
            if first_last_bits is None:
                continue
            quantized = _quantized_copy(layer, first_last_bits, first_last_bits, method)
        else:
            quantized = _quantized_copy(layer, wbits, abits, method)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, quantized)
    return model


def calibrate(model: nn.Module, images: torch.Tensor) -> None:
    """Initialise every not-yet-initialised quantizer from one no-grad forward of ``images`` ``[B, C, H, W]``.

    The forward runs in train mode (batch statistics in BN) with dropout off, so the result depends only on the
    model and the batch: ranks that calibrate on the same batch start identical. BN running statistics and every
    module's train/eval mode are restored afterwards.
    """
    modes = {module: module.training for module in model.modules()}
    norm_buffers = [
        {name: buffer.clone() for name, buffer in module.named_buffers(recurse=False)}
        for module in model.modules()
        if isinstance(module, _BatchNorm)
    ]
    model.train()
    for module in model.modules():
        if isinstance(module, _DropoutNd):
            module.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        norms = [module for module in model.modules() if isinstance(module, _BatchNorm)]
        with torch.no_grad():
            for module, saved in zip(norms, norm_buffers, strict=False):
                for name, value in saved.items():
                    getattr(module, name).copy_(value)
        for module, training in modes.items():
            module.training = training


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, layer)`` of every QuantConv2d / QuantLinear in ``model``, in registration order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, QUANT_LAYER_TYPES)]


def _quantized_keys(model: nn.Module) -> set[str]:
    """State-dict keys replaced by the integer part of the artifact: quantized weights and quantizer state."""
    layer_names = {name for name, _ in quantized_layers(model)}
    keys = set()
    for key in model.state_dict():
        for name in layer_names:
            prefix = f"{name}." if name else ""
            rest = key[len(prefix) :] if key.startswith(prefix) else None
            if rest is not None and (
                rest == "weight" or rest.startswith("weight_quantizer.") or rest.startswith("act_quantizer.")
            ):
                keys.add(key)
    return keys


def export_int_state(model: nn.Module) -> dict:
    """The deployable integer artifact of a fake-quantized ``model`` (plain tensors, numbers and strings).

    ``{"format", "layers": {name: {"kind", "method", "weight_int" (int8, in [Qn, Qp]), "weight_step" (float,
    1-D: one per output channel or one), "weight_offset", "weight_bits", "act_step" (float, 1-D), "act_bits",
    "act_signed"}}, "float": {state-dict key: tensor}}``: the float part holds every other tensor (biases, BN,
    full-precision layers). The layer computes ``op(q_act(x), (weight_int + weight_offset) * weight_step)`` with
    ``q_act(x) = round(clamp(x / act_step, Qn, Qp)) * act_step``. Every quantizer must be initialised.
    """
    layers = {}
    for name, layer in quantized_layers(model):
        act = layer.act_quantizer
        quantizers = (layer.weight_quantizer, act)
        if not all(getattr(quantizer, "is_initialized", True) for quantizer in quantizers):
            raise RuntimeError(f"layer {name!r} has an uninitialised quantizer; run calibrate() before exporting")
        weight_int, weight_step, weight_offset = layer.weight_quantizer.integer_weight(layer.weight)
        layers[name] = {
            "kind": "conv2d" if isinstance(layer, QuantConv2d) else "linear",
            "method": layer.method,
            "weight_int": weight_int.cpu(),
            "weight_step": weight_step.float().cpu(),
            "weight_offset": float(weight_offset),
            "weight_bits": int(layer.wbits),
            "act_step": act.effective_step().float().cpu(),
            "act_bits": int(layer.abits),
            "act_signed": bool(act.is_signed),
        }
    skipped = _quantized_keys(model)
    float_part = {key: value.detach().cpu().clone() for key, value in model.state_dict().items() if key not in skipped}
    return {"format": INT_STATE_FORMAT, "layers": layers, "float": float_part}


def load_int_state(model: nn.Module, state: dict) -> nn.Module:
    """Load an ``export_int_state`` artifact into ``model``, a fresh ``quantize()``d model of the same architecture.

    Afterwards ``model`` computes what the exported model computed. LSQ layers stay trainable LSQ layers; DoReFa /
    PACT layers get ``FixedGridQuantizer``s holding the exported grids. Returns ``model``.
    """
    if not isinstance(state, dict) or state.get("format") != INT_STATE_FORMAT:
        raise DaqSearchError(f"int state: not a daq-search integer artifact; allowed format: {INT_STATE_FORMAT}")
    layers = dict(quantized_layers(model))
    if set(layers) != set(state["layers"]):
        missing, unexpected = sorted(set(layers) - set(state["layers"])), sorted(set(state["layers"]) - set(layers))
        raise DaqSearchError(
            f"int state: quantized layers do not match the model; missing {missing}, unexpected {unexpected}"
        )
    expected_float = set(model.state_dict()) - _quantized_keys(model)
    if expected_float != set(state["float"]):
        missing, unexpected = sorted(expected_float - set(state["float"])), sorted(set(state["float"]) - expected_float)
        raise DaqSearchError(
            f"int state: float tensors do not match the model; missing {missing}, unexpected {unexpected}"
        )
    for name, entry in state["layers"].items():
        layer = layers[name]
        if (entry["method"], entry["weight_bits"], entry["act_bits"]) != (layer.method, layer.wbits, layer.abits):
            raise DaqSearchError(
                f"int state: layer {name!r} is {entry['method']} W{entry['weight_bits']}A{entry['act_bits']}, "
                f"the model's is {layer.method} W{layer.wbits}A{layer.abits}"
            )
        device = layer.weight.device
        weight_step = entry["weight_step"].to(device)
        with torch.no_grad():
            levels = entry["weight_int"].to(device).float() + entry["weight_offset"]
            layer.weight.copy_(levels * _along(weight_step, 0, layer.weight.dim()))
        if layer.method == "lsq":
            layer.weight_quantizer.set_state(weight_step, signed=True)
            layer.act_quantizer.set_state(entry["act_step"].to(device), signed=entry["act_signed"])
        else:
            act_step = entry["act_step"].to(device)
            layer.weight_quantizer = FixedGridQuantizer(entry["weight_bits"], True, weight_step, entry["weight_offset"])
            layer.act_quantizer = FixedGridQuantizer(entry["act_bits"], entry["act_signed"], act_step)
    model.load_state_dict(state["float"], strict=False)
    return model
