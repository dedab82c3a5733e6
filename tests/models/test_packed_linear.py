"""PackedLinear: oneDNN-packed weights in CPU float32 inference, F.linear everywhere else."""
import copy
import pickle

import pytest
import timm
import torch
from torch import nn

from sparsevision.models.layers import PackedLinear, pack_linear_layers, packed_linear_available
from sparsevision.models.token_pruning import from_timm

pytestmark = pytest.mark.skipif(not packed_linear_available(), reason='this torch build has no oneDNN')


def linear(bias: bool = True, in_features: int = 48, out_features: int = 80) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias)


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('shape', [(1, 48), (7, 48), (2, 197, 48), (3, 1, 5, 48)])
def test_packed_matches_linear(bias, shape):
    plain = linear(bias)
    packed = PackedLinear.from_linear(plain)
    x = torch.randn(*shape) * 10
    with torch.no_grad():
        expected, result = plain(x), packed(x)
        assert packed.uses_packed_weight(x)
    assert result.shape == expected.shape
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('approximate', ['none', 'tanh'])
def test_fused_gelu(approximate):
    plain = linear()
    packed = PackedLinear.from_linear(plain, gelu=approximate)
    x = torch.randn(3, 20, 48)
    expected = torch.nn.functional.gelu(plain(x), approximate=approximate)
    assert torch.equal(packed(x), expected)   # autograd on: F.linear + F.gelu, bitwise
    with torch.no_grad():
        assert packed.uses_packed_weight(x)
        torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match='approximate'):
        PackedLinear.from_linear(plain, gelu='erf')


def test_non_contiguous_and_empty_inputs():
    plain = linear()
    packed = PackedLinear.from_linear(plain)
    x = torch.randn(48, 9).t()   # [9, 48], transposed view
    with torch.no_grad():
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-4)
        empty = torch.zeros(0, 48)
        assert packed(empty).shape == (0, 80)


def test_shares_parameters_and_state_dict():
    plain = linear()
    packed = PackedLinear.from_linear(plain)
    assert packed.weight is plain.weight and packed.bias is plain.bias
    assert packed.state_dict().keys() == plain.state_dict().keys()


def test_training_and_gradients_use_plain_linear_bitwise():
    plain = linear()
    packed = PackedLinear.from_linear(plain)
    x = torch.randn(5, 48, requires_grad=True)
    assert not packed.uses_packed_weight(x)
    result = packed(x)
    assert torch.equal(result, plain(x))
    result.sum().backward()
    assert plain.weight.grad is not None and x.grad is not None
    with torch.no_grad():
        assert not packed.uses_packed_weight(x.double())
        assert torch.equal(packed.double()(x.double()), plain.double()(x.double()))


def test_weight_changes_are_picked_up():
    plain = linear()
    packed = PackedLinear.from_linear(plain)
    x = torch.randn(4, 48)
    with torch.no_grad():
        before = packed(x)
        plain.weight.mul_(2)   # an in-place update (optimizer step, load_state_dict) bumps the version
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-4)
        packed.load_state_dict({'weight': torch.zeros(80, 48), 'bias': torch.ones(80)})
        assert torch.equal(packed(x), torch.ones(4, 80)) and not torch.equal(before, packed(x))


def test_deterministic_across_threads_and_copies():
    packed = PackedLinear.from_linear(linear(in_features=384, out_features=1152))
    x = torch.randn(2, 139, 384)
    previous = torch.get_num_threads()
    try:
        with torch.no_grad():
            outputs = []
            for threads in (1, 2, 1, 2):
                torch.set_num_threads(threads)
                outputs.append(packed(x))
            copies = [copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))]
            outputs += [clone(x) for clone in copies]
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(outputs[0], output) for output in outputs[1:])


def test_pack_linear_layers_on_a_pruned_vit():
    torch.manual_seed(0)
    dense = timm.create_model('vit_tiny_patch16_224', img_size=64, num_classes=10).eval()
    pruned = from_timm(dense, 'evit', keep_rate=0.7, locations=(1, 2)).eval()
    packed = pack_linear_layers(copy.deepcopy(pruned))
    linears = [m for m in packed.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is PackedLinear for m in linears)
    assert all(block.mlp.fc1.gelu == 'none' and type(block.mlp.act) is nn.Identity for block in packed.blocks)
    assert packed.state_dict().keys() == pruned.state_dict().keys()
    images = torch.randn(3, 3, 64, 64)
    assert torch.equal(packed(images), pruned(images))   # autograd on: the plain path, bitwise
    with torch.no_grad():
        torch.testing.assert_close(packed(images), pruned(images), rtol=1e-4, atol=1e-4)
    packed.train()
    packed(images).sum().backward()   # still trains, through F.linear
    assert packed.blocks[0].attn.qkv.weight.grad is not None


def test_without_onednn_the_error_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, 'is_available', lambda: False)
    with pytest.raises(RuntimeError, match='without pack_linear_layers'):
        pack_linear_layers(nn.Sequential(nn.Linear(2, 2)))
