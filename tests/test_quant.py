"""Fake quantization (LSQ, DoReFa + PACT), calibration and the integer artifact."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from daq_search.errors import DaqSearchError
from daq_search.models import create_model
from daq_search.quant import (
    QUANT_METHODS,
    DoReFaWeightQuantizer,
    LSQQuantizer,
    PACTQuantizer,
    QuantConv2d,
    QuantLinear,
    calibrate,
    export_int_state,
    level_range,
    load_int_state,
    quantize,
    quantized_layers,
)


def _warmed_model(name: str, images: torch.Tensor, seed: int = 0) -> nn.Module:
    """A seeded model whose BN running statistics are those of ``images`` (so eval mode is sensible)."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_channels=images.shape[1], image_size=images.shape[-1])
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        model(images)
    return model.eval()


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).norm() / reference.norm()).item()


def test_level_ranges():
    assert level_range(2, True) == (-2, 1)
    assert level_range(2, False) == (0, 3)
    assert level_range(8, True) == (-128, 127)
    assert level_range(4, False) == (0, 15)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lsq_weights_land_on_integer_multiples_of_the_channel_step(bits):
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 3, 3)
    quantizer = LSQQuantizer(bits, signed=True, per_channel=True)
    quantized = quantizer(weight)
    qn, qp = level_range(bits, True)
    assert quantizer.step.shape == (6,)
    for channel in range(6):
        assert quantized[channel].unique().numel() <= 2**bits
        levels = quantized[channel] / quantizer.step[channel]
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert qn <= levels.min().round() and levels.max().round() <= qp
    # the first forward set step = 2 mean|w| / sqrt(Qp) per output channel
    expected = 2 * weight.abs().mean(dim=(1, 2, 3)) / math.sqrt(qp)
    assert torch.allclose(quantizer.step.detach(), expected)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_dorefa_weights_take_at_most_2_to_the_b_symmetric_values(bits):
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 3, 3) * 0.2
    quantizer = DoReFaWeightQuantizer(bits)
    quantized = quantizer(weight)
    levels, step, offset = quantizer.integer_weight(weight)
    qn, qp = level_range(bits, True)
    assert quantized.unique().numel() <= 2**bits
    assert torch.equal((levels.float() + offset) * step, quantized)
    assert levels.dtype == torch.int8 and qn <= levels.min() and levels.max() <= qp
    assert torch.allclose(step, 2 * weight.abs().max() / (2**bits - 1))
    assert torch.allclose(quantized.abs().max(), weight.abs().max())  # the extreme weight maps to the extreme level


@pytest.mark.parametrize("bits", [2, 4])
def test_unsigned_activations_stay_in_zero_to_qp_steps(bits):
    torch.manual_seed(0)
    quantizer = LSQQuantizer(bits, signed=None)
    first_batch = torch.relu(torch.randn(64))
    quantizer(first_batch)
    assert not quantizer.is_signed
    qn, qp = level_range(bits, False)
    assert torch.allclose(quantizer.step, 2 * first_batch.mean() / math.sqrt(qp))
    out = quantizer(torch.randn(1000) * 5)
    step = quantizer.step.detach()
    assert out.min() >= 0
    assert out.max() <= qp * step + 1e-6
    assert torch.isclose(out.max(), qp * step)  # large inputs saturate at Qp steps
    assert out.unique().numel() <= 2**bits


def test_activation_sign_comes_from_the_first_batch():
    signed = LSQQuantizer(3, signed=None)
    out = signed(torch.tensor([-1.0, 0.5, 2.0]))
    assert signed.is_signed and bool(signed.signed)
    assert out.min() < 0
    pact = PACTQuantizer(3, signed=None)
    pact(torch.tensor([-1.0, 0.5, 2.0]))
    assert pact.is_signed
    out = pact(torch.tensor([-5.0, 5.0]))
    assert torch.allclose(out, torch.tensor([-2.0, 1.5]))  # clip to [-alpha, alpha], alpha = max|x| = 2, step 0.5


def test_pact_unsigned_clips_to_alpha():
    pact = PACTQuantizer(2, signed=None)
    x = torch.tensor([0.0, 0.4, 1.1, 3.0])
    out = pact(x)
    assert not pact.is_signed and torch.allclose(pact.alpha, torch.tensor([3.0]))
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 1.0, 3.0]))  # step 1: round(0.4)=0, round(1.1)=1
    assert torch.equal(pact(torch.tensor([-2.0, 7.0])), torch.tensor([0.0, 3.0]))


def test_lsq_step_gradient_matches_hand_computation():
    quantizer = LSQQuantizer(2, signed=True)  # Qn = -2, Qp = 1
    quantizer.set_state(torch.tensor([0.5]), signed=True)
    x = torch.tensor([-1.3, 0.2, 0.7, 3.0], requires_grad=True)
    out = quantizer(x)
    out.sum().backward()
    assert torch.allclose(out, torch.tensor([-1.0, 0.0, 0.5, 0.5]))
    # d q / d s: Qn below the range, round(x/s) - x/s inside, Qp above; x/s = -2.6, 0.4, 1.4, 6
    # sum = -2 + (0 - 0.4) + 1 + 1 = -0.4, times the LSQ scale 1 / sqrt(numel * Qp) = 1 / sqrt(4 * 1)
    assert torch.allclose(quantizer.step.grad, torch.tensor([-0.2]))
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 0.0, 0.0]))  # straight through only inside the range


@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_evaluation_gives_exactly_the_training_values_and_leaves_its_input_alone(per_channel):
    quantizer = LSQQuantizer(3, signed=True, per_channel=per_channel)  # Qn = -4, Qp = 3
    quantizer.set_state(torch.tensor([0.1, 0.2]) if per_channel else torch.tensor([0.15]), signed=True)
    x = torch.tensor([[0.13, -0.36, -0.01, 9.0], [0.9, 0.05, -0.8, -0.1]])
    trained = quantizer(x.clone().requires_grad_()).detach()
    with torch.no_grad():
        evaluated = quantizer(x)
    assert torch.equal(evaluated, trained) and torch.equal(x[0], torch.tensor([0.13, -0.36, -0.01, 9.0]))
    # by hand, step 0.15: x/s = 0.87, -2.4, -0.07, 60 -> 1, -2, -0 (round keeps the sign), 3 (Qp)
    if not per_channel:
        assert torch.equal(torch.signbit(evaluated[0]), torch.tensor([False, True, True, False]))
        assert torch.allclose(evaluated[0], torch.tensor([0.15, -0.3, 0.0, 0.45]))


def test_lsq_per_channel_step_gradient_matches_hand_computation():
    quantizer = LSQQuantizer(3, signed=True, per_channel=True)  # Qn = -4, Qp = 3
    quantizer.set_state(torch.tensor([0.1, 0.2]), signed=True)
    weight = torch.tensor([[0.13, -0.36], [0.9, 0.05]])
    quantizer(weight).sum().backward()
    # channel 0: x/s = 1.3, -3.6 -> (1 - 1.3) + (-4 + 3.6) = -0.7; channel 1: 4.5 (above Qp), 0.25 -> 3 - 0.25
    expected = torch.tensor([-0.7, 2.75]) / math.sqrt(2 * 3)
    assert torch.allclose(quantizer.step.grad, expected)


def test_lsq_unsigned_step_gradient_uses_unsigned_qp():
    quantizer = LSQQuantizer(2, signed=False)  # Qn = 0, Qp = 3
    quantizer.set_state(torch.tensor([1.0]), signed=False)
    quantizer(torch.tensor([0.4, 1.2, 5.0, -1.0])).sum().backward()
    # -0.4 - 0.2 + 3 + 0 = 2.4, scale 1 / sqrt(4 * 3)
    assert torch.allclose(quantizer.step.grad, torch.tensor([2.4 / math.sqrt(12)]))


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_gradients_reach_weights_and_quantizer_parameters(method):
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    model = quantize(create_model("tiny_cnn", num_classes=10, image_size=16), 2, 2, method)
    calibrate(model, images)
    F.cross_entropy(model(images), labels).backward()
    layers = quantized_layers(model)
    assert len(layers) == 3
    for name, layer in layers:
        assert layer.weight.grad.abs().sum() > 0, name
        act_parameter = layer.act_quantizer.step if method == "lsq" else layer.act_quantizer.alpha
        assert act_parameter.grad.abs().sum() > 0, name
        if method == "lsq":
            assert (layer.weight_quantizer.step.grad != 0).any(), name


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_8_bits_stay_close_to_full_precision_and_2_bits_do_not(method):
    torch.manual_seed(0)
    images = torch.randn(16, 3, 16, 16)
    full = _warmed_model("tiny_cnn", images)
    with torch.no_grad():
        reference = full(images)
    errors = {}
    for bits in (8, 2):
        model = quantize(copy.deepcopy(full), bits, bits, method, first_last_bits=bits)
        calibrate(model, images)
        with torch.no_grad():
            errors[bits] = _relative_error(model(images), reference)
    assert errors[8] < 0.15
    assert errors[2] > 0.5


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_first_and_last_layers_get_their_own_bits(method):
    model = create_model("tiny_cnn", num_classes=10)
    original_weight = model.features[4].weight
    quantize(model, 2, 3, method, first_last_bits=8)
    first, middle, last = model.features[0], model.features[4], model.fc
    assert isinstance(first, QuantConv2d) and (first.wbits, first.abits) == (8, 8)
    assert isinstance(middle, QuantConv2d) and (middle.wbits, middle.abits) == (2, 3)
    assert isinstance(last, QuantLinear) and (last.wbits, last.abits) == (8, 8)
    assert middle.weight is original_weight  # the float weights are the start point
    assert middle.weight_quantizer.bits == 2 and middle.act_quantizer.bits == 3

    kept = quantize(create_model("tiny_cnn", num_classes=10), 2, 2, method, first_last_bits=None)
    assert type(kept.features[0]) is nn.Conv2d and type(kept.fc) is nn.Linear
    assert [name for name, _ in quantized_layers(kept)] == ["features.4"]


def test_quantize_reaches_nested_layers_of_torchvision_models():
    model = quantize(create_model("mobilenet_v2", num_classes=10, width=0.25, image_size=16), 4, 4)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(isinstance(m, QuantConv2d) for m in convs)
    assert model.features[0][0].wbits == 8 and model.classifier[1].wbits == 8
    assert model.features[1].conv[0][0].wbits == 4  # the depthwise conv of the first inverted residual


@pytest.mark.parametrize("quantizer_type", ["lsq", "pact"])
def test_state_dict_round_trip_keeps_initialisation_and_sign(quantizer_type):
    build = (lambda: LSQQuantizer(3, signed=None)) if quantizer_type == "lsq" else (lambda: PACTQuantizer(3, None))
    source = build()
    x = torch.tensor([-0.8, 0.1, 0.5, 1.7])
    expected = source(x)
    target = build()
    assert not target.is_initialized
    target.load_state_dict(source.state_dict())
    assert target.is_initialized and target.is_signed
    assert bool(target.initialized) and bool(target.signed)
    assert torch.equal(target(x * 3), source(x * 3))  # no re-initialisation from the new batch
    assert torch.equal(target(x), expected)


def test_per_channel_step_round_trips_into_a_fresh_quantizer():
    source = LSQQuantizer(4, signed=True, per_channel=True)
    weight = torch.randn(5, 2, 3, 3)
    expected = source(weight)
    target = LSQQuantizer(4, signed=True, per_channel=True)
    target.load_state_dict(source.state_dict())
    assert target.step.shape == (5,)
    assert torch.equal(target(weight), expected)


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_model_state_dict_round_trip(method):
    torch.manual_seed(0)
    images = torch.randn(8, 3, 16, 16)
    source = quantize(create_model("resnet8", num_classes=10, image_size=16), 3, 3, method)
    calibrate(source, images)
    target = quantize(create_model("resnet8", num_classes=10, image_size=16), 3, 3, method)
    target.load_state_dict(source.state_dict())
    source.eval(), target.eval()
    with torch.no_grad():
        assert torch.equal(target(images), source(images))


def test_calibrate_initialises_quantizers_and_leaves_bn_and_modes_alone():
    torch.manual_seed(0)
    images = torch.randn(8, 3, 16, 16)
    model = _warmed_model("resnet8", images)
    model.stages[0].bn1.train()  # a mixed train/eval model keeps each module's own mode
    quantize(model, 4, 4)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    calibrate(model, images * 2 + 1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and model.stages[0].bn1.training and not model.stages[0].bn2.training
    assert all(layer.act_quantizer.is_initialized for _, layer in quantized_layers(model))
    first_step = model.stem[0].act_quantizer.step.detach()
    expected = 2 * (images * 2 + 1).abs().mean() / math.sqrt(127)  # signed 8-bit input of the first conv
    assert torch.allclose(first_step, expected)


def test_calibrate_gives_identical_replicas_despite_dropout():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 8, 8)
    model = quantize(create_model("mobilenet_v2", num_classes=10, width=0.25, image_size=8), 4, 4)
    replicas = [copy.deepcopy(model), copy.deepcopy(model)]
    for seed, replica in enumerate(replicas):
        torch.manual_seed(seed)  # ranks have different random states
        calibrate(replica, images)
    first, second = (replica.state_dict() for replica in replicas)
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("method", QUANT_METHODS)
@pytest.mark.parametrize("first_last_bits", [8, None])
def test_integer_artifact_reproduces_the_fake_quantized_model(method, first_last_bits):
    torch.manual_seed(0)
    images = torch.randn(16, 3, 16, 16)
    model = quantize(_warmed_model("resnet8", images), 3, 2, method, first_last_bits=first_last_bits)
    calibrate(model, images)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)  # move weights and steps off their start values
    model.train()
    F.cross_entropy(model(images), torch.randint(0, 10, (16,))).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        expected = model(images)

    buffer = io.BytesIO()
    torch.save(export_int_state(model), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    for name, entry in state["layers"].items():
        qn, qp = level_range(entry["weight_bits"], True)
        assert entry["weight_int"].dtype == torch.int8, name
        assert qn <= entry["weight_int"].min() and entry["weight_int"].max() <= qp, name
        assert f"{name}.weight" not in state["float"]
    assert "fc.bias" in state["float"] and "stem.1.running_mean" in state["float"]
    assert ("stem.0.weight" in state["float"]) == (first_last_bits is None)

    skeleton = quantize(_warmed_model("resnet8", images, seed=1), 3, 2, method, first_last_bits=first_last_bits)
    loaded = load_int_state(skeleton, state).eval()
    with torch.no_grad():
        actual = loaded(images)
    assert (actual - expected).abs().max() < 1e-5
    assert torch.equal(actual.argmax(1), expected.argmax(1))


def test_integer_artifact_refuses_a_different_architecture():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 16, 16)
    model = quantize(create_model("tiny_cnn", num_classes=10, image_size=16), 4, 4)
    calibrate(model, images)
    state = export_int_state(model)
    with pytest.raises(DaqSearchError, match="int state: layer 'features.4' is lsq W4A4, the model's is lsq W2A2"):
        load_int_state(quantize(create_model("tiny_cnn", num_classes=10), 2, 2), state)
    with pytest.raises(DaqSearchError, match="int state: quantized layers do not match the model"):
        load_int_state(quantize(create_model("tiny_cnn", num_classes=10), 4, 4, first_last_bits=None), state)
    with pytest.raises(DaqSearchError, match="int state: not a daq-search integer artifact"):
        load_int_state(quantize(create_model("tiny_cnn", num_classes=10), 4, 4), {"layers": {}})


def test_export_needs_calibration():
    with pytest.raises(RuntimeError, match="uninitialised quantizer"):
        export_int_state(quantize(create_model("tiny_cnn", num_classes=10), 4, 4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wbits": 1, "abits": 4}, r"^quant\.wbits: 1 is out of range; allowed 2\.\.8$"),
        ({"wbits": 4, "abits": 9}, r"^quant\.abits: 9 is out of range; allowed 2\.\.8$"),
        ({"wbits": 4, "abits": 4, "first_last_bits": 16}, r"^quant\.first_last_bits: 16 .*allowed 2\.\.8$"),
        ({"wbits": "4", "abits": 4}, r"^quant\.wbits: '4' is out of range"),
        ({"wbits": True, "abits": 4}, r"^quant\.wbits: True is out of range"),
        ({"wbits": 4, "abits": 4, "method": "pact"}, r"^quant\.method: unknown method 'pact'; allowed: lsq, dorefa"),
    ],
)
def test_bad_quantization_settings_raise(kwargs, message):
    with pytest.raises(DaqSearchError, match=message):
        quantize(create_model("tiny_cnn", num_classes=10), **kwargs)


def test_quantizing_twice_raises():
    model = quantize(create_model("tiny_cnn", num_classes=10), 4, 4)
    with pytest.raises(DaqSearchError, match="already quantized"):
        quantize(model, 4, 4)


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_a_2_bit_student_learns_a_separable_toy_problem(method):
    torch.manual_seed(0)
    labels = torch.arange(32) % 2
    images = torch.randn(32, 1, 8, 8) * 0.3
    images[labels == 0, :, :4] += 1.0  # class 0: bright top half; class 1: bright bottom half
    images[labels == 1, :, 4:] += 1.0
    model = quantize(create_model("tiny_cnn", num_classes=2, in_channels=1, image_size=8), 2, 2, method)
    calibrate(model, images)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
