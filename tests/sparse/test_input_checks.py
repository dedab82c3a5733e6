"""Input checks give the right reason: index dtypes, duplicate sites, layer geometry, grid sizes, reused maps."""
import numpy as np
import pytest
import torch

import sparsevision.sparse as sv
import sparsevision.sparse.tensor as tensor_module
from sparsevision.ops import reference

SITES = torch.tensor([[0, 1, 1, 1], [0, 1, 2, 2], [1, 3, 0, 4]])
DUPLICATED = torch.tensor([[0, 1, 1, 1], [0, 1, 2, 2], [0, 1, 1, 1]], dtype=torch.int32)
DUPLICATE_MESSAGE = r'has duplicate coordinates \(rows 0 and 2\); merge duplicate points first'


def sparse(indices=SITES, spatial_shape=(8, 8, 8), batch_size=2, channels=2):
    return sv.SparseTensor(torch.ones(indices.shape[0], channels), indices, spatial_shape, batch_size)


# --- index dtypes ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [torch.int64, torch.int16, torch.int8, torch.uint8])
def test_small_and_wide_integer_indices_are_converted_to_int32(dtype):
    x = sparse(SITES.to(dtype))
    assert x.indices.dtype == torch.int32 and torch.equal(x.indices, SITES.to(torch.int32))


@pytest.mark.parametrize('dtype, advice', [
    (torch.float32, 'voxelize float points first'), (torch.float64, 'voxelize float points first'),
    (torch.float16, 'voxelize float points first'), (torch.bool, r'convert them with \.to\(torch\.int32\)'),
    (torch.uint16, r'convert them with \.to\(torch\.int32\)'),
])
def test_other_index_dtypes_are_refused_by_name(dtype, advice):
    with pytest.raises(ValueError, match=rf'indices must be integers of dtype int32 .* got {dtype}; {advice}'):
        sparse(SITES.to(dtype))


def test_int64_indices_beyond_int32_say_so():
    indices = torch.tensor([[0, 2**31]])
    with pytest.raises(ValueError, match=r'do not fit in int32 \(largest magnitude 2147483648\)'):
        sv.SparseTensor(torch.ones(1, 1), indices, [2**32], 1)


# --- duplicate sites ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('use', [
    lambda x: x.dense(),
    lambda x: x.dense(channels_first=False),
    lambda x: sv.SparseGlobalAvgPool()(x),
    lambda x: sv.SparseGlobalMaxPool()(x),
    lambda x: sv.SubMConv3d(2, 2, 3)(x),
    lambda x: sv.SparseConv3d(2, 2, 3, 2, 1)(x),
    lambda x: sv.SparseMaxPool3d(3, 2, 1)(x),
], ids=['dense', 'dense_channels_last', 'global_avg_pool', 'global_max_pool', 'subm_conv', 'conv', 'max_pool'])
def test_every_site_dependent_operation_refuses_duplicates_alike(use):
    with pytest.raises(ValueError, match=DUPLICATE_MESSAGE):
        use(sparse(DUPLICATED))


def test_reference_kernels_refuse_duplicates_with_the_native_message():
    with pytest.raises(ValueError, match=f'kernel_map: in_indices {DUPLICATE_MESSAGE}'):
        reference.kernel_map(DUPLICATED, DUPLICATED, [8, 8, 8], [3] * 3, [1] * 3, [1] * 3, [1] * 3)
    with pytest.raises(ValueError, match=f'downsample_indices: indices {DUPLICATE_MESSAGE}'):
        reference.downsample_indices(DUPLICATED, [8, 8, 8], [3] * 3, [2] * 3, [1] * 3, [1] * 3)


@pytest.fixture
def sorts(monkeypatch):
    """The number of times a SparseTensor sorted its sites to look for duplicates."""
    calls = []
    check = tensor_module.sorted_distinct_keys
    monkeypatch.setattr(tensor_module, 'sorted_distinct_keys', lambda *args: calls.append(1) or check(*args))
    return calls


def test_duplicate_check_sorts_once_per_coordinate_set(sorts):
    x = sparse()
    x.dense()
    x.replace_feature(x.features * 2).dense()   # same sites: already known distinct
    sv.SparseGlobalAvgPool()(x)
    assert len(sorts) == 1


def test_sites_a_layer_built_a_map_on_or_produced_need_no_sort(sorts):
    x = sparse()
    y = sv.SubMConv3d(2, 2, 3)(x)
    down = sv.SparseConv3d(2, 2, 3, 2, 1)(y)
    x.dense(), y.dense(), down.dense(), sv.SparseGlobalMaxPool()(down)
    sv.SparseTensor.from_dense(x.dense(channels_first=False)).dense()
    assert sorts == []


def test_constructor_stays_free_of_the_sort(sorts):
    sparse(DUPLICATED)
    assert sorts == []


# --- layer geometry -------------------------------------------------------------------------------------------------

LAYERS = {
    'SubMConv3d': lambda **geometry: sv.SubMConv3d(2, 2, **{'kernel_size': 3, **geometry}),
    'SparseConv3d': lambda **geometry: sv.SparseConv3d(2, 2, **{'kernel_size': 3, **geometry}),
    'SparseInverseConv3d': lambda kernel_size: sv.SparseInverseConv3d(2, 2, kernel_size, indice_key='down'),
    'SparseMaxPool3d': lambda **geometry: sv.SparseMaxPool3d(**{'kernel_size': 3, **geometry}),
    'SparseAvgPool2d': lambda **geometry: sv.SparseAvgPool2d(**{'kernel_size': 3, **geometry}),
}
BAD_GEOMETRY = [
    ('kernel_size', 0, 'kernel_size must be >= 1, got 0'),
    ('kernel_size', -3, 'kernel_size must be >= 1, got -3'),
    ('kernel_size', (3, 0, 3), 'kernel_size must be >= 1, got 0'),
    ('kernel_size', 2.5, 'kernel_size must be an integer, got 2.5'),
    ('stride', 0, 'stride must be >= 1, got 0'),
    ('stride', -1, 'stride must be >= 1, got -1'),
    ('dilation', 0, 'dilation must be >= 1, got 0'),
    ('padding', -1, 'padding must be >= 0, got -1'),
    ('padding', True, 'padding must be an integer, got the bool True'),
]


@pytest.mark.parametrize('layer, argument, value, message', [
    (layer, argument, value[:2] if layer.endswith('2d') and isinstance(value, tuple) else value, message)
    for layer in sorted(LAYERS) for argument, value, message in BAD_GEOMETRY
    if argument == 'kernel_size' or layer != 'SparseInverseConv3d'])   # an inverse convolution takes only a kernel
def test_bad_geometry_is_refused_at_construction_by_name(layer, argument, value, message):
    with pytest.raises(ValueError, match=message):
        LAYERS[layer](**{argument: value})


def test_integer_like_geometry_is_accepted():
    layer = sv.SparseConv3d(2, 2, np.int64(3), stride=torch.tensor(2), padding=[1, np.int32(1), 1.0])
    assert layer.kernel_size == (3, 3, 3) and layer.stride == (2, 2, 2) and layer.padding == (1, 1, 1)
    assert all(type(value) is int for value in layer.kernel_size + layer.stride + layer.padding)


# --- batch_size and spatial_shape -----------------------------------------------------------------------------------

@pytest.mark.parametrize('spatial_shape, batch_size, message', [
    ([8, 8, 8], 2.5, 'batch_size must be an integer, got 2.5'),
    ([8, 8, 8], True, 'batch_size must be an integer, got the bool True'),
    ([8, 8, 8], torch.tensor(True), 'batch_size must be an integer, got the bool'),
    ([8, 8, 8], -1, 'batch_size must be >= 0, got -1'),
    ([10.7, 8, 8], 2, r'spatial_shape\[0\] must be an integer, got 10.7'),
    ([8, 8, np.float32(8.5)], 2, r'spatial_shape\[2\] must be an integer, got np.float32\(8.5\)'),
    ([8, False, 8], 2, r'spatial_shape\[1\] must be an integer, got the bool False'),
    ([8, 8, '8'], 2, r"spatial_shape\[2\] must be an integer, got '8'"),
])
def test_fractional_or_boolean_sizes_are_refused(spatial_shape, batch_size, message):
    with pytest.raises(ValueError, match=message):
        sparse(spatial_shape=spatial_shape, batch_size=batch_size)


@pytest.mark.parametrize('spatial_shape, batch_size', [
    (np.array([8, 8, 8]), np.int64(2)),
    (torch.tensor([8, 8, 8]), torch.tensor(2)),
    ((8.0, 8.0, 8.0), 2.0),   # integral floats, as grid sizes computed from a range and a voxel size come
])
def test_integer_sizes_of_any_kind_are_accepted(spatial_shape, batch_size):
    x = sparse(spatial_shape=spatial_shape, batch_size=batch_size)
    assert x.spatial_shape == [8, 8, 8] and x.batch_size == 2
    assert all(type(value) is int for value in [*x.spatial_shape, x.batch_size])


# --- maps reused through indice_key ---------------------------------------------------------------------------------

def test_inverse_convolution_needs_the_kernel_size_of_the_convolution_it_undoes():
    down = sv.SparseConv3d(2, 2, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), indice_key='down')
    y = down(sparse())
    with pytest.raises(ValueError, match=r"kernel_size \(3, 3, 1\) but the convolution registered as 'down' has "
                                         r'\(1, 3, 3\)'):   # as many taps: this ran on, with a wrong result
        sv.SparseInverseConv3d(2, 2, (3, 3, 1), indice_key='down')(y)
    with pytest.raises(ValueError, match=r'kernel_size \(2, 2, 2\) but'):
        sv.SparseInverseConv3d(2, 2, 2, indice_key='down')(y)
    assert torch.equal(sv.SparseInverseConv3d(2, 2, (1, 3, 3), indice_key='down')(y).indices, sparse().indices)


def test_inverse_convolution_refuses_replaced_indices():
    y = sv.SparseConv3d(2, 2, 3, stride=2, padding=1, indice_key='down')(sparse())
    y.indices = y.indices[:1]
    with pytest.raises(ValueError, match="not on the output sites of the convolution registered as 'down'"):
        sv.SparseInverseConv3d(2, 2, 3, indice_key='down')(y.replace_feature(y.features[:1]))


def test_indice_key_reused_with_another_geometry_is_refused():
    x = sparse()
    sv.SparseConv3d(2, 2, 3, stride=2, indice_key='shared')(x)
    with pytest.raises(ValueError, match=r"indice_key 'shared' belongs to a layer with another geometry \(convolution, "
                                         r'kernel_size=\(3, 3, 3\), stride=\(2, 2, 2\).*stride=\(1, 1, 1\)'):
        sv.SparseConv3d(2, 2, 3, stride=1, indice_key='shared')(x)


def test_submanifold_layers_differing_only_in_ignored_padding_share_their_map():
    x = sparse()
    y = sv.SubMConv3d(2, 2, 3, padding=1, indice_key='subm')(x)
    sv.SubMConv3d(2, 2, 3, indice_key='subm')(y)
    sv.SubMConv3d(2, 2, 3, stride=2)(y)
    assert len(x.kernel_maps) == 1
