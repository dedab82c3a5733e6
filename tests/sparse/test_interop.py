"""Conversions to and from spconv, spconv 1.x checkpoints and torchsparse/MinkowskiEngine weights."""
import itertools

import pytest
import torch

import sparsevision.sparse as sv
from sparsevision.ops.coordinates import keys_to_coordinates


def _tensor(count=120, shape=(6, 7, 8), channels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    indices = keys_to_coordinates(torch.randperm(2 * 6 * 7 * 8, generator=generator)[:count], list(shape))
    return sv.SparseTensor(torch.randn(count, channels, generator=generator, dtype=torch.float64), indices, shape, 2)


def test_spconv_tensor_round_trip():
    spconv = pytest.importorskip('spconv.pytorch')
    x = _tensor()
    theirs = x.to_spconv()
    assert isinstance(theirs, spconv.SparseConvTensor)
    back = sv.from_spconv(theirs)
    assert torch.equal(back.features, x.features) and torch.equal(back.indices, x.indices)
    assert back.spatial_shape == x.spatial_shape and back.batch_size == x.batch_size


def test_spconv1_checkpoint_loads_and_matches():
    def build():
        return sv.SparseSequential(sv.SubMConv3d(3, 4, 3, bias=False), sv.SparseConv3d(4, 5, (3, 1, 3), 2, 1),
                                   sv.SubMConv3d(5, 6, 1, bias=False)).double()

    torch.manual_seed(0)
    model = build()
    old_layout = {key: sv.weight_to_spconv1(value) if key.endswith('weight') else value
                  for key, value in model.state_dict().items()}
    assert old_layout['0.weight'].shape == (3, 3, 3, 3, 4) and old_layout['2.weight'].shape == (1, 1, 1, 5, 6)
    fresh = build()
    fresh.load_state_dict(sv.convert_spconv1_state_dict(fresh, old_layout))
    x = _tensor()
    assert torch.equal(fresh(x).features, model(x).features)
    with pytest.raises(ValueError, match='neither ours'):
        sv.convert_spconv1_state_dict(fresh, {'0.weight': torch.zeros(2, 2)})


def test_one_tap_kernels_convert_to_the_matrix_they_apply():
    """spconv 1.x [1, 1, 1, in, out], Minkowski [1, in, out] and our kernel-1 layer all compute x @ W."""
    x = _tensor()
    their_weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    layer = sv.SubMConv3d(3, 4, 1, bias=False).double()
    for converted in (sv.weight_from_minkowski(their_weight.unsqueeze(0), (1, 1, 1)),
                      sv.weight_from_spconv1(their_weight.reshape(1, 1, 1, 3, 4))):
        layer.weight.data = converted
        torch.testing.assert_close(layer(x).features, x.features @ their_weight)
    assert torch.equal(sv.weight_to_minkowski(layer.weight.data), their_weight.unsqueeze(0))
    assert torch.equal(sv.weight_to_spconv1(layer.weight.data), their_weight.reshape(1, 1, 1, 3, 4))


def minkowski_convolution(coordinates_xyz, features, weight, kernel_size_xyz):
    """MinkowskiEngine's definition, written out: out(u) = sum_i W[i] x(u + offset_i), offsets x fastest, centred."""
    sites = {tuple(c): row for row, c in enumerate(coordinates_xyz.tolist())}
    ranges = [range(-(k // 2), k // 2 + 1) for k in kernel_size_xyz]
    offsets = [tuple(reversed(o)) for o in itertools.product(*reversed(ranges))]   # x fastest
    out = torch.zeros(len(sites), weight.shape[2], dtype=features.dtype)
    for site, row in sites.items():
        for tap, offset in enumerate(offsets):
            neighbor = (site[0],) + tuple(c + o for c, o in zip(site[1:], offset))
            if neighbor in sites:
                out[row] += features[sites[neighbor]] @ weight[tap]
    return out


@pytest.mark.parametrize('kernel_size', [(3, 3, 3), (1, 3, 5)])
def test_minkowski_layout_matches_its_definition(kernel_size):
    x = _tensor()
    generator = torch.Generator().manual_seed(1)
    taps = kernel_size[0] * kernel_size[1] * kernel_size[2]
    their_weight = torch.randn(taps, 3, 4, generator=generator, dtype=torch.float64)
    coordinates_xyz = torch.cat([x.indices[:, :1], x.indices[:, 1:].flip(1)], dim=1)   # (batch, x, y, z)
    expected = minkowski_convolution(coordinates_xyz, x.features, their_weight, kernel_size[::-1])
    layer = sv.SubMConv3d(3, 4, kernel_size, bias=False).double()
    layer.weight.data = sv.weight_from_minkowski(their_weight, kernel_size)
    torch.testing.assert_close(layer(x).features, expected)
    assert torch.equal(sv.weight_to_minkowski(layer.weight.data), their_weight)
