"""Model registry: every network builds for small gray and colour images and returns the right logits."""

import pytest
import torch
from torch import nn

from daq_search.errors import DaqSearchError
from daq_search.models import create_model, list_models, register_model

ALL_MODELS = ["mobilenet_v2", "resnet18", "resnet20", "resnet32", "resnet8", "tiny_cnn", "vgg13", "vgg8"]


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_model():
    assert list_models() == ALL_MODELS


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize(("in_channels", "image_size", "num_classes"), [(1, 16, 10), (3, 32, 100)])
def test_model_maps_images_to_logits(name, in_channels, image_size, num_classes):
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    logits = model(torch.randn(2, in_channels, image_size, image_size))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["tiny_cnn", "resnet8", "vgg8", "vgg13", "mobilenet_v2"])
@pytest.mark.parametrize("image_size", [8, 28])
def test_model_accepts_any_image_size_from_8(name, image_size):
    model = create_model(name, num_classes=5, in_channels=1, image_size=image_size).eval()
    assert model(torch.randn(2, 1, image_size, image_size)).shape == (2, 5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_first_conv_reads_the_image_and_last_linear_gives_logits(name):
    model = create_model(name, num_classes=7, in_channels=1, image_size=16)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert convs[0].in_channels == 1
    assert linears[-1].out_features == 7
    assert not any(getattr(m, "inplace", False) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6)))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_width_scales_the_parameter_count(name):
    narrow = _param_count(create_model(name, num_classes=10, width=0.5))
    default = _param_count(create_model(name, num_classes=10))
    assert narrow < default


def test_width_multiplies_channels_with_rounding():
    model = create_model("resnet8", num_classes=10, width=0.3)
    stage_widths = [block.conv2.out_channels for block in model.stages]
    assert stage_widths == [5, 10, 19]  # round(16 * 0.3), round(32 * 0.3), round(64 * 0.3)
    assert create_model("tiny_cnn", num_classes=10, width=0.01).fc.in_features == 1


def test_same_seed_gives_the_same_weights():
    torch.manual_seed(3)
    first = create_model("resnet8", num_classes=10).state_dict()
    torch.manual_seed(3)
    second = create_model("resnet8", num_classes=10).state_dict()
    torch.manual_seed(4)
    third = create_model("resnet8", num_classes=10).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["stem.0.weight"], third["stem.0.weight"])


def test_resnet18_stem_depends_on_image_size():
    small = create_model("resnet18", num_classes=10, in_channels=1, image_size=32)
    assert (small.conv1.in_channels, small.conv1.kernel_size, small.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(small.maxpool, nn.Identity)
    large = create_model("resnet18", num_classes=10, in_channels=1, image_size=96)
    assert (large.conv1.in_channels, large.conv1.kernel_size, large.conv1.stride) == (1, (7, 7), (2, 2))
    assert isinstance(large.maxpool, nn.MaxPool2d)


def test_mobilenet_v2_stem_stride_depends_on_image_size():
    small = create_model("mobilenet_v2", num_classes=10, in_channels=1, image_size=64)
    large = create_model("mobilenet_v2", num_classes=10, in_channels=3, image_size=96)
    assert (small.features[0][0].in_channels, small.features[0][0].stride) == (1, (1, 1))
    assert (large.features[0][0].in_channels, large.features[0][0].stride) == (3, (2, 2))


def test_vgg_keeps_max_pools_that_fit_the_image():
    def pool_count(size: int) -> int:
        model = create_model("vgg8", num_classes=10, image_size=size)
        return sum(isinstance(m, nn.MaxPool2d) for m in model.modules())

    assert [pool_count(32), pool_count(16), pool_count(8)] == [4, 4, 3]


def test_unknown_model_names_the_allowed_ones():
    with pytest.raises(DaqSearchError, match=r"^unknown model 'resnet9'; allowed: mobilenet_v2, resnet18, .*vgg8$"):
        create_model("resnet9", num_classes=10)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"width": 0.0}, "width"),
        ({"image_size": 4}, "image_size"),
        ({"num_classes": 0}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_out_of_range_arguments_raise(kwargs, field):
    arguments = {"num_classes": 10, **kwargs}
    with pytest.raises(DaqSearchError, match=rf"^{field} .* out of range for model 'tiny_cnn'; allowed"):
        create_model("tiny_cnn", **arguments)


def test_register_model_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("tiny_cnn")(lambda **kwargs: nn.Identity())
