"""Student and teacher networks for small images, behind a timm-style name registry.

Every model is a plain ``nn.Module`` mapping float images ``[B, C, H, W]`` to logits ``[B, num_classes]``, built
from ``nn.Conv2d`` / ``nn.BatchNorm2d`` / non-inplace ``nn.ReLU`` / ``nn.Linear`` so that ``quant.quantize`` can swap
its layers. The first registered conv is the stem and the last registered linear is the classifier.

Registered names:

- ``tiny_cnn``: two conv-BN-ReLU-maxpool stages (16, 32 channels), global average pool, linear. For fast tests.
- ``resnet8`` / ``resnet20`` / ``resnet32``: CIFAR ResNets (He et al. 2016, Sec. 4.2): 3x3 stem with 16 channels,
  three stages of 16/32/64 channels with 1/3/5 BasicBlocks each, stride 2 at the start of stages 2 and 3, global
  average pool, linear. Shortcuts that change shape are 1x1 conv + BN ("option B").
- ``vgg8`` / ``vgg13``: CIFAR VGG with BN as in the CRD/SQAKD code (RepDistiller ``vgg.py``): five stages of
  3x3 conv-BN-ReLU with widths 64/128/256/512/512, one conv per stage for vgg8 and two for vgg13, a 2x2 max pool
  after each of the first four stages, global average pool, one linear layer. A max pool is left out where the
  feature map would fall below 1x1, so every image size >= 8 works.
- ``resnet18`` / ``mobilenet_v2``: torchvision's networks (``weights=None``). For images of at most 64 pixels the
  stem is CIFAR-style: resnet18 gets a 3x3 stride-1 first conv and no max pool, mobilenet_v2 a stride-1 first conv.

``width`` multiplies every channel count (rounded to the nearest integer, at least 1). For mobilenet_v2 it is
torchvision's ``width_mult`` with channel rounding to integers, which keeps the 1280-channel last conv for
``width < 1`` as torchvision does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torchvision

if TYPE_CHECKING:
    from .data import DataBundle
from torch import nn

from daq_search.errors import DaqSearchError

ModelBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}

SMALL_IMAGE_MAX = 64  # images up to this many pixels a side get a CIFAR-style stem in the ImageNet networks
MIN_IMAGE_SIZE = 8


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder ``fn(*, num_classes, in_channels, image_size, width) -> nn.Module`` under ``name``."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str, *, num_classes: int, in_channels: int = 3, image_size: int = 32, width: float = 1.0
) -> nn.Module:
    """Build the registered model ``name`` for ``in_channels``-channel square images of ``image_size`` pixels.

    Returns a freshly initialised model (deterministic given ``torch.manual_seed``) whose output is
    ``[B, num_classes]`` logits. Raises ``DaqSearchError`` for an unknown name or an out-of-range argument.
    """
    if name not in _REGISTRY:
        raise DaqSearchError(f"unknown model {name!r}; allowed: {', '.join(list_models())}")
    _check_int(name, "num_classes", num_classes, 1)
    _check_int(name, "in_channels", in_channels, 1)
    _check_int(name, "image_size", image_size, MIN_IMAGE_SIZE)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width < float("inf"):
        raise DaqSearchError(f"width {width!r} is out of range for model {name!r}; allowed: a number > 0")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width)


def _check_int(model: str, field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DaqSearchError(f"{field} {value!r} is out of range for model {model!r}; allowed: an integer >= {minimum}")


def _scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest integer, at least 1."""
    return max(1, int(round(channels * width)))


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


def _init_conv_bn(model: nn.Module) -> None:
    """He-normal (fan-out) conv weights, BN scale 1 and shift 0; linear layers keep PyTorch's default init."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class TinyCNN(nn.Module):
    """Two conv-BN-ReLU-maxpool stages, global average pool and a linear classifier."""

    def __init__(self, num_classes: int, in_channels: int, width: float) -> None:
        super().__init__()
        c1, c2 = _scaled(16, width), _scaled(32, width)
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, c1), nn.MaxPool2d(2), *_conv_bn_relu(c1, c2), nn.MaxPool2d(2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, C, H, W]``."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection; a 1x1 conv-BN shortcut where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, three stages of BasicBlocks (stride 2 entering stages 2 and 3), pool, linear."""

    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int, width: float) -> None:
        super().__init__()
        stage_widths = [_scaled(c, width) for c in (16, 32, 64)]
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, stage_widths[0]))
        blocks: list[nn.Module] = []
        current = stage_widths[0]
        for stage, out_channels in enumerate(stage_widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(current, out_channels, stride))
                current = out_channels
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(current, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, C, H, W]``."""
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


VGG_STAGES = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class CifarVGG(nn.Module):
    """CIFAR VGG with BN: conv stages with 2x2 max pools between them, global average pool, one linear layer."""

    def __init__(
        self, stages: Sequence[Sequence[int]], num_classes: int, in_channels: int, image_size: int, width: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        current, size = in_channels, image_size
        for index, stage in enumerate(stages):
            for channels in stage:
                layers += _conv_bn_relu(current, _scaled(channels, width))
                current = _scaled(channels, width)
            if index < len(stages) - 1 and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(current, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of images ``[B, C, H, W]``."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _no_inplace_activations(model: nn.Module) -> nn.Module:
    """Turn off ``inplace`` on every ReLU / ReLU6 so forward hooks see each activation unchanged."""
    for module in model.modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            module.inplace = False
    return model


@register_model("tiny_cnn")
def tiny_cnn(*, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    """Two-conv network for fast tests (``image_size`` only needs to be >= 8)."""
    return TinyCNN(num_classes, in_channels, width)


@register_model("resnet8")
def resnet8(*, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    """CIFAR ResNet-8: one BasicBlock per stage."""
    return CifarResNet(1, num_classes, in_channels, width)


@register_model("resnet20")
def resnet20(*, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    """CIFAR ResNet-20: three BasicBlocks per stage."""
    return CifarResNet(3, num_classes, in_channels, width)


@register_model("resnet32")
def resnet32(*, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    """CIFAR ResNet-32: five BasicBlocks per stage."""
    return CifarResNet(5, num_classes, in_channels, width)


@register_model("vgg8")
def vgg8(*, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    """CIFAR VGG-8 with BN: five single-conv stages."""
    return CifarVGG(VGG_STAGES["vgg8"], num_classes, in_channels, image_size, width)


@register_model("vgg13")
def vgg13(*, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    """CIFAR VGG-13 with BN: five two-conv stages."""
    return CifarVGG(VGG_STAGES["vgg13"], num_classes, in_channels, image_size, width)


@register_model("resnet18")
def resnet18(*, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    """torchvision ResNet-18 (stage widths 64..512 times ``width``); CIFAR-style stem for images <= 64 pixels."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    widths = [_scaled(c, width) for c in (64, 128, 256, 512)]
    if width != 1.0:
        model.inplanes = widths[0]
        model.bn1 = nn.BatchNorm2d(widths[0])
        block = torchvision.models.resnet.BasicBlock
        model.layer1 = model._make_layer(block, widths[0], 2)
        model.layer2 = model._make_layer(block, widths[1], 2, stride=2)
        model.layer3 = model._make_layer(block, widths[2], 2, stride=2)
        model.layer4 = model._make_layer(block, widths[3], 2, stride=2)
        model.fc = nn.Linear(widths[3], num_classes)
    if image_size <= SMALL_IMAGE_MAX:
        model.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3 or width != 1.0:
        model.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
    _init_conv_bn(model if width != 1.0 else model.conv1)  # torchvision's init for the replaced modules
    return _no_inplace_activations(model)


@register_model("mobilenet_v2")
def mobilenet_v2(*, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    """torchvision MobileNetV2 with ``width_mult=width``; stride-1 first conv for images <= 64 pixels."""
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width, round_nearest=1)
    first: nn.Conv2d = model.features[0][0]
    stride = 1 if image_size <= SMALL_IMAGE_MAX else 2
    if in_channels != first.in_channels or stride != first.stride[0]:
        stem = nn.Conv2d(in_channels, first.out_channels, 3, stride=stride, padding=1, bias=False)
        nn.init.kaiming_normal_(stem.weight, mode="fan_out")
        model.features[0][0] = stem
    return _no_inplace_activations(model)


def model_arch(model_name: str, width: float, bundle: DataBundle) -> dict:
    """The architecture record of a model shaped for ``bundle``: name, width, classes, input channels, image side."""
    return {
        "model": model_name,
        "width": width,
        "num_classes": bundle.num_classes,
        "in_channels": bundle.in_channels,
        "image_size": bundle.image_size,
    }


def create_for(model_name: str, width: float, bundle: DataBundle) -> nn.Module:
    """A fresh full-precision model of the named architecture shaped for ``bundle``'s images and classes."""
    arch = model_arch(model_name, width, bundle)
    return create_model(arch.pop("model"), **arch)
