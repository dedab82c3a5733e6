"""spike_sparse_conv (event-driven) against the dense-site convolution and the reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsevision.ops as ops
import sparsevision.sparse as sv
from sparsevision.ops import reference
from sparsevision.ops.coordinates import keys_to_coordinates
from sparsevision.sparse.spike_conv import SpikeSparseConvolution

SPIKE_CONV = torch.ops.sparsevision.spike_sparse_conv.default


def make_case(count, shape, in_channels, out_channels, rate, dtype=torch.float32, seed=0, strided=False,
              max_spikes=1, batches=1):
    generator = torch.Generator().manual_seed(seed)
    cells = 2 * int(torch.tensor(shape).prod())
    sites = keys_to_coordinates(torch.randperm(cells * batches, generator=generator)[:count] % cells, shape)
    sites[:, 0] = torch.randint(0, batches, (count,), generator=generator).int()
    sites = torch.unique(sites, dim=0)
    if strided:
        outputs, _ = ops.downsample_indices(sites, shape, 3, 2, 1)
        neighbors = ops.build_kernel_map(sites, outputs, shape, 3, 2, 1)
    else:
        neighbors = ops.submanifold_kernel_map(sites, shape, 3)
    inverse = ops.invert_kernel_map(neighbors, sites.shape[0])
    fired = torch.rand(sites.shape[0], in_channels, generator=generator) < rate
    counts = torch.randint(1, max_spikes + 1, fired.shape, generator=generator)
    spikes = (fired * counts).to(dtype)
    weight = torch.randn(neighbors.shape[1], in_channels, out_channels, generator=generator, dtype=dtype)
    return spikes, weight, neighbors, inverse


def dense_site(spikes, weight, neighbors, inverse):
    return ops.sparse_conv(spikes, weight, neighbors, inverse, 1)


@settings(max_examples=60, deadline=None)
@given(count=st.integers(0, 200), in_channels=st.integers(1, 70), out_channels=st.sampled_from([1, 7, 16, 32, 64, 80]),
       rate=st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.5, 1.0]), strided=st.booleans(), seed=st.integers(0, 1000),
       dtype=st.sampled_from([torch.float32, torch.float64]), batches=st.integers(1, 5))
def test_binary_spikes_equal_the_dense_site_convolution_bitwise(count, in_channels, out_channels, rate, strided,
                                                                seed, dtype, batches):
    case = make_case(count, [5, 6, 7], in_channels, out_channels, rate, dtype, seed, strided, batches=batches)
    out = ops.spike_sparse_conv(*case)
    assert torch.equal(out, dense_site(*case))
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out, reference.spike_sparse_conv(*case), **tolerance)


@pytest.mark.parametrize('out_channels', [64, 24])
def test_multi_spikes_scale_weight_rows(out_channels):
    case = make_case(500, [8, 8, 8], 32, out_channels, 0.2, torch.float64, max_spikes=4)
    assert case[0].max() == 4
    torch.testing.assert_close(ops.spike_sparse_conv(*case), reference.spike_sparse_conv(*case), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize('case', ['no_spikes', 'every_channel_fires', 'no_inputs', 'no_outputs', 'single_site',
                                  'huge_coordinates', 'many_batches'])
def test_adversarial(case):
    if case == 'no_spikes':
        spikes, weight, neighbors, inverse = make_case(300, [6, 6, 6], 16, 64, 0.0)
    elif case == 'every_channel_fires':
        spikes, weight, neighbors, inverse = make_case(300, [6, 6, 6], 16, 64, 1.0)
    elif case == 'no_inputs':
        spikes, weight = torch.zeros(0, 8), torch.randn(27, 8, 16)
        neighbors, inverse = torch.full((4, 27), -1, dtype=torch.int32), torch.zeros(0, 27, dtype=torch.int32)
    elif case == 'no_outputs':
        spikes, weight = torch.ones(3, 8), torch.randn(27, 8, 16)
        neighbors, inverse = torch.zeros(0, 27, dtype=torch.int32), torch.full((3, 27), -1, dtype=torch.int32)
    elif case == 'single_site':
        spikes, weight, neighbors, inverse = make_case(1, [3, 3, 3], 8, 16, 1.0)
    elif case == 'huge_coordinates':
        sites = torch.tensor([[0, 2**30, 5, 7], [0, 2**30, 5, 8], [0, 2**30 + 1, 5, 7]], dtype=torch.int32)
        shape = [2**31 - 1, 10, 10]
        neighbors = ops.submanifold_kernel_map(sites, shape, 3)
        inverse = neighbors.flip(1).contiguous()
        spikes, weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.randn(27, 2, 16)
    else:
        spikes, weight, neighbors, inverse = make_case(2000, [6, 6, 6], 16, 32, 0.2, batches=40)
    out = ops.spike_sparse_conv(spikes, weight, neighbors, inverse)
    assert torch.equal(out, dense_site(spikes, weight, neighbors, inverse))
    torch.testing.assert_close(out, reference.spike_sparse_conv(spikes, weight, neighbors, inverse), rtol=1e-5,
                               atol=1e-4)


def test_gradients_match_the_dense_site_convolution_and_gradcheck():
    spikes, weight, neighbors, inverse = make_case(60, [4, 4, 4], 5, 6, 0.3, torch.float64, strided=True,
                                                   max_spikes=3)
    spikes.requires_grad_()
    weight.requires_grad_()
    grad_output = torch.randn(neighbors.shape[0], 6, dtype=torch.float64)
    ours = torch.autograd.grad(ops.spike_sparse_conv(spikes, weight, neighbors, inverse), (spikes, weight),
                               grad_output)
    theirs = torch.autograd.grad(dense_site(spikes, weight, neighbors, inverse), (spikes, weight), grad_output)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda s, w: SPIKE_CONV(s, w, neighbors, inverse), (spikes, weight))


def test_opcheck():
    spikes, weight, neighbors, inverse = make_case(80, [5, 5, 5], 6, 16, 0.3, torch.float64, strided=True)
    torch.library.opcheck(SPIKE_CONV, (spikes.requires_grad_(), weight.requires_grad_(), neighbors, inverse))


@pytest.mark.parametrize('out_channels', [64, 24])
def test_bitwise_identical_across_threads(out_channels):
    spikes, weight, neighbors, inverse = make_case(5000, [20, 20, 20], 64, out_channels, 0.1)
    previous, results = torch.get_num_threads(), []
    try:
        for count in (1, 2, 2):
            torch.set_num_threads(count)
            results.append(ops.spike_sparse_conv(spikes, weight, neighbors, inverse))
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(result, results[0]) for result in results[1:])


def test_bad_input_is_refused():
    spikes, weight, neighbors, inverse = make_case(50, [5, 5, 5], 4, 8, 0.3)
    with pytest.raises(ValueError, match='spikes must be'):
        ops.spike_sparse_conv(spikes, weight[:, :3], neighbors, inverse)
    with pytest.raises(ValueError, match='float64'):
        ops.spike_sparse_conv(spikes, weight.double(), neighbors, inverse)
    with pytest.raises(ValueError, match='kernel maps'):
        ops.spike_sparse_conv(spikes, weight, neighbors[:, :5], inverse)
    broken = neighbors.clone()
    broken[0, 0] = 10_000
    with pytest.raises(ValueError, match='kernel map entries must be -1 or rows'):
        ops.spike_sparse_conv(spikes, weight, broken, inverse)


@pytest.mark.parametrize('row, bad_entry', [(0, 10_000), (-1, 50), (7, -2)])
def test_native_kernel_refuses_out_of_range_map_entries_wherever_they_are(row, bad_entry):
    if not ops.extension_info().cpu_kernels:
        pytest.skip('needs the native extension')
    spikes, weight, neighbors, inverse = make_case(50, [5, 5, 5], 4, 16, 0.3)
    broken = neighbors.clone()
    broken[row, -1] = bad_entry
    with pytest.raises(ValueError, match='kernel map entries must be -1 or rows'):
        torch.ops.sparsevision.spike_sparse_conv(spikes, weight, broken, inverse)


@pytest.mark.parametrize('rate', [0.1, 0.8])   # event-driven and dense-site paths of the layer
def test_spike_layer_equals_the_ordinary_layer(rate):
    spikes, _, _, _ = make_case(400, [8, 8, 8], 16, 32, rate)
    generator = torch.Generator().manual_seed(0)
    cells = keys_to_coordinates(torch.randperm(1024, generator=generator)[:spikes.shape[0]], [8, 8, 16])
    x = sv.SparseTensor(spikes, cells, [8, 8, 16], 1)
    ordinary = sv.SubMConv3d(16, 32, 3)
    spiking = SpikeSparseConvolution(3, 16, 32, 3, subm=True)
    spiking.load_state_dict(ordinary.state_dict())
    assert torch.equal(spiking(x).features, ordinary(x).features)
    with pytest.raises(ValueError, match='event_threshold'):
        SpikeSparseConvolution(3, 16, 32, event_threshold=1.5)
