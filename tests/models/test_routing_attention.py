"""BiLevelRoutingAttention against the gather formulation of BiFormer's paper (region-mean routing, top-k regions,
their keys and values gathered into per-region copies, softmax attention, LCE, output projection)."""
import pytest
import torch

from sparsevision.models.layers import BiLevelRoutingAttention
from sparsevision.models.layers.routing_attention import gathered_routing_attention, routed_region_index


@pytest.mark.parametrize('size, n_win, topk, heads', [((28, 28), 7, 4, 4), ((16, 12), 4, 1, 2), ((8, 8), 2, 4, 1)])
def test_equals_the_gather_formulation(size, n_win, topk, heads):
    torch.manual_seed(0)
    layer = BiLevelRoutingAttention(16, num_heads=heads, n_win=n_win, topk=topk, side_dwconv=5).double()
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), gathered_routing_attention(layer, x), rtol=1e-10, atol=1e-10)


def test_state_dict_has_the_official_names_and_gradients_flow():
    layer = BiLevelRoutingAttention(32, num_heads=4, n_win=2, qk_dim=16, topk=2)
    assert sorted(layer.state_dict()) == ['lepe.bias', 'lepe.weight', 'qkv.qkv.bias', 'qkv.qkv.weight', 'wo.bias',
                                          'wo.weight']
    assert layer.qkv.qkv.weight.shape == (2 * 16 + 32, 32)
    x = torch.randn(1, 6, 6, 32, dtype=torch.float64, requires_grad=True)
    layer.double()
    assert torch.autograd.gradcheck(lambda t: layer(t), x)


def test_auto_pad_pads_and_crops():
    layer = BiLevelRoutingAttention(8, num_heads=2, n_win=3, topk=2, auto_pad=True)
    x = torch.randn(1, 7, 8, 8)
    out = layer(x)
    assert out.shape == x.shape
    padded = torch.zeros(1, 9, 9, 8)
    padded[:, :7, :8] = x
    torch.testing.assert_close(out, layer(padded)[:, :7, :8])


def test_the_index_names_each_pixels_routed_regions():
    routes = torch.tensor([[[1], [0], [3], [2]]])   # 2 x 2 regions of 2 x 2 pixels on a 4 x 4 map
    index = routed_region_index(routes, 4, 4, 2)
    assert index.shape == (16, 4)
    assert index[0].tolist() == [2, 3, 6, 7]            # pixel (0, 0) is in region 0, routed to region 1
    assert index[15].tolist() == [8, 9, 12, 13]         # pixel (3, 3): region 3, routed to region 2 (bottom left)


def test_an_empty_batch():
    assert BiLevelRoutingAttention(8, 2, n_win=2, topk=1)(torch.randn(0, 4, 4, 8)).shape == (0, 4, 4, 8)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match='official defaults only'):
        BiLevelRoutingAttention(8, num_heads=2, param_routing=True)
    with pytest.raises(ValueError, match='topk must be'):
        BiLevelRoutingAttention(8, num_heads=2, n_win=2, topk=5)
    with pytest.raises(ValueError, match='multiples of n_win=3'):
        BiLevelRoutingAttention(8, num_heads=2, n_win=3, topk=2)(torch.randn(1, 7, 9, 8))
    with pytest.raises(ValueError, match='divisible by num_heads'):
        BiLevelRoutingAttention(10, num_heads=4)
