"""PackedLinear: oneDNN-packed weights in CPU float32 inference, F.linear everywhere else."""
import copy
import pickle

import pytest
import timm
import torch
from torch import nn

from sparsevision.models.layers import PackedLinear, pack_linear_layers, packed_linear_available
from sparsevision.models.token_pruning import TokenPruningViT, from_timm

pytestmark = pytest.mark.skipif(not packed_linear_available(), reason='this torch build has no oneDNN')


def linear(bias: bool = True, in_features: int = 48, out_features: int = 80) -> nn.Linear:
    """An eval-mode layer (packing is for inference; ``from_linear`` copies the mode)."""
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias).eval()


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


def test_training_mode_runs_plain_linear_even_without_autograd():
    plain = linear()
    packed = PackedLinear.from_linear(plain).train()
    x = torch.randn(6, 48)
    with torch.no_grad():
        assert not packed.uses_packed_weight(x)
        assert torch.equal(packed(x), plain(x))


def test_replaced_weight_tensors_are_never_mistaken_for_the_packed_one():
    """A new weight may land at the address of a freed one; the packed copy holds its source, so none can."""
    plain = linear()
    packed = PackedLinear.from_linear(plain)
    x = torch.randn(4, 48)
    with torch.no_grad():
        for _ in range(10):
            packed(x)
            plain.weight.data = torch.randn(80, 48)
            plain.weight.data = torch.randn(80, 48)   # without the held source, often at the packed one's address
            torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-4)


def test_changes_through_data_are_picked_up_after_eval_and_moves_drop_the_copy():
    plain = linear()
    packed = PackedLinear.from_linear(plain)
    x = torch.randn(4, 48)
    with torch.no_grad():
        packed(x)
        plain.weight.data.mul_(2)   # .data hides the change from the version counter ...
        packed.eval()               # ... so re-entering eval mode repacks, as the docstring says
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-4)
        assert '_packed' in packed.__dict__
        packed.double()
        assert '_packed' not in packed.__dict__   # no stale float32 copy kept after a move
        assert torch.equal(packed(x.double()), plain(x.double()))


def test_weights_made_in_inference_mode_run_plain_linear():
    with torch.inference_mode():
        plain = linear()
        packed = PackedLinear.from_linear(plain)
        x = torch.randn(4, 48)
        assert not packed.uses_packed_weight(x)   # inference tensors have no version counter to follow
        assert torch.equal(packed(x), plain(x))


def test_tracing_and_export_see_plain_linear():
    packed = PackedLinear.from_linear(linear(), gelu='none')
    x = torch.randn(4, 48)
    with torch.no_grad():
        traced = torch.jit.trace(packed, x)
        assert 'mkldnn' not in str(traced.graph)
        torch.testing.assert_close(traced(x), packed(x), rtol=1e-5, atol=1e-4)
        exported = torch.export.export(packed, (x,))
        assert 'mkldnn' not in str(exported.graph)


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
    pruned = from_timm(dense, 'evit', keep_rate=0.7, locations=(1, 2), pack_linear=False).eval()
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


def packed_layers(model: nn.Module) -> int:
    return sum(type(module) is PackedLinear for module in model.modules())


def test_pruning_models_pack_by_default_and_pruning_off_stays_plain():
    torch.manual_seed(0)
    dense = timm.create_model('vit_tiny_patch16_224', img_size=64, num_classes=10).eval()
    pruned, plain = (from_timm(dense, 'tome', r=1, pack_linear=pack).eval() for pack in (None, False))
    assert packed_layers(pruned) == 4 * 12 + 1 and packed_layers(plain) == 0   # qkv, proj, fc1, fc2; head
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(pruned(images), plain(images))   # autograd on: F.linear, bitwise
    for no_autograd in (torch.no_grad, torch.inference_mode):
        with no_autograd():
            pruned.blocks[0].attn.qkv.__dict__.pop('_packed', None)
            torch.testing.assert_close(pruned(images), plain(images), rtol=1e-4, atol=1e-4)
            assert '_packed' in pruned.blocks[0].attn.qkv.__dict__   # the packed path ran
    assert packed_layers(from_timm(dense, 'evit', keep_rate=1.0)) == 0   # pruning off: timm's model, bitwise
    assert packed_layers(from_timm(dense, 'evit', keep_rate=1.0, pack_linear=True)) == 4 * 12 + 1
    tiny = dict(method=dict(type='SpAttenRouter', locations=(1,)), img_size=32, patch_size=8, embed_dim=32,
                depth=2, num_heads=2, num_classes=3)
    assert packed_layers(TokenPruningViT(**tiny)) == 4 * 2 + 1   # the zoo's class too
    assert packed_layers(TokenPruningViT(pack_linear=False, **tiny)) == 0


@pytest.mark.parametrize('optimizer_args', [dict(foreach=False), dict(foreach=True), dict(fused=True)])
def test_packed_inference_follows_training_steps(optimizer_args):
    torch.manual_seed(0)
    dense = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=2, num_classes=3)
    model = from_timm(dense, 'evit', keep_rate=0.5, locations=(1,))
    reference = from_timm(dense, 'evit', keep_rate=0.5, locations=(1,), pack_linear=False).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, **optimizer_args)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model.eval()(images)   # packs every layer
    for _ in range(2):
        model.train()
        model(images).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            reference.load_state_dict(model.state_dict())
            after = model.eval()(images)
            torch.testing.assert_close(after, reference(images), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(after, before, atol=1e-2)


def test_without_onednn_the_error_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, 'is_available', lambda: False)
    with pytest.raises(RuntimeError, match='without pack_linear_layers'):
        pack_linear_layers(nn.Sequential(nn.Linear(2, 2)))
