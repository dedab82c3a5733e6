"""CUDA kernels of the kernel-map and sparse-convolution ops against the CPU kernels and the reference.

Every test runs on the GPU when there is one and on the CPU emulation of the CUDA kernels (tests/cuda_emulation.py)
unless SV_SKIP_EMULATION=1; see the ``cuda_backend`` fixture.
"""
import contextlib

import pytest
import torch

import sparsevision.ops as ops
from cuda_emulation import launch_count
from sparsevision.ops import extension_info, reference
from sparsevision.ops.conv_algorithms import ConvAlgorithm, use_conv_algorithm
from sparsevision.ops.coordinates import keys_to_coordinates
from sparsevision.utils.host_syncs import SYNCING_OPS, HostSyncs

requires_cuda_kernels = pytest.mark.skipif(not (torch.cuda.is_available() and extension_info().cuda_kernels),
                                           reason='CUDA or the CUDA kernels of sparsevision._C are not available')
SPARSE_CONV = torch.ops.sparsevision.sparse_conv.default
WEIGHT_GRAD = torch.ops.sparsevision.sparse_conv_weight_grad.default


def random_sites(count, shape, batch_size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cells = batch_size * int(torch.tensor(shape).prod())
    return keys_to_coordinates(torch.randperm(cells, generator=generator)[:count], shape)


GEOMETRIES = [   # (kernel, stride, padding, dilation)
    ([3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1]),
    ([3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1]),
    ([2, 3, 1], [2, 1, 1], [0, 2, 0], [1, 2, 1]),
    ([5, 1, 3], [3, 1, 2], [2, 0, 1], [1, 1, 2]),
]


@pytest.mark.parametrize('count', [0, 1, 500, 3000])
@pytest.mark.parametrize('geometry', GEOMETRIES)
def test_kernel_maps_equal_cpu(cuda_backend, count, geometry):
    shape = [12, 15, 18]
    sites = random_sites(count, shape, seed=count)
    outputs, out_shape = ops.downsample_indices(sites, shape, *geometry)
    neighbors = ops.build_kernel_map(sites, outputs, shape, *geometry)
    with cuda_backend:
        outputs_cuda, out_shape_cuda = ops.downsample_indices(cuda_backend.to(sites), shape, *geometry)
        neighbors_cuda = ops.build_kernel_map(cuda_backend.to(sites), outputs_cuda, shape, *geometry)
        inverse_cuda = ops.invert_kernel_map(neighbors_cuda, count)
    assert out_shape == out_shape_cuda and torch.equal(outputs_cuda.cpu(), outputs)
    assert torch.equal(neighbors_cuda.cpu(), neighbors)
    assert torch.equal(inverse_cuda.cpu(), ops.invert_kernel_map(neighbors, count))


def test_submanifold_map_and_huge_coordinates(cuda_backend):
    shape = [2**20, 2**20, 2**20]   # keys beyond int32
    sites = torch.tensor([[0, 5, 5, 5], [0, 5, 5, 6], [1, 2**20 - 1, 2**20 - 1, 2**20 - 1]], dtype=torch.int32)
    expected = ops.submanifold_kernel_map(sites, shape, 3)
    with cuda_backend:
        assert torch.equal(ops.submanifold_kernel_map(cuda_backend.to(sites), shape, 3).cpu(), expected)


def test_bad_input_raises(cuda_backend):
    sites = cuda_backend.to(torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.int32))
    outside = cuda_backend.to(torch.tensor([[0, 9, 1, 1]], dtype=torch.int32))
    features, weight = cuda_backend.to(torch.randn(3, 4)), cuda_backend.to(torch.randn(27, 4, 8))
    broken = torch.full((2, 27), -1, dtype=torch.int32)
    broken[0, 0] = 3
    below = torch.full((2, 27), -1, dtype=torch.int32)
    below[1, 5] = -2
    with cuda_backend:
        with pytest.raises(ValueError, match='duplicate'):
            torch.ops.sparsevision.kernel_map(sites, sites, [4, 4, 4], [3] * 3, [1] * 3, [1] * 3, [1] * 3)
        with pytest.raises(ValueError, match='duplicate'):
            torch.ops.sparsevision.downsample_indices(sites, [4, 4, 4], [3] * 3, [2] * 3, [1] * 3, [1] * 3)
        with pytest.raises(ValueError, match='outside the grid'):
            torch.ops.sparsevision.kernel_map(outside, outside, [4, 4, 4], [3] * 3, [1] * 3, [1] * 3, [1] * 3)
        with pytest.raises(ValueError, match='is read by'):
            torch.ops.sparsevision.invert_kernel_map(cuda_backend.to(torch.zeros(2, 1, dtype=torch.int32)), 3)
        for bad_map in (broken, below):
            with pytest.raises(ValueError, match='kernel map entries'):
                SPARSE_CONV(features, weight, cuda_backend.to(bad_map), cuda_backend.to(bad_map), 1)
            with pytest.raises(ValueError, match='kernel map entries'):
                torch.ops.sparsevision.invert_kernel_map(cuda_backend.to(bad_map), 3)


def test_skipped_checks_stay_memory_safe(cuda_backend):
    """A caller's claim that sites or a map were checked skips the CUDA kernels' sync, never a bounds check: a wrong
    claim drops the bad rows and entries instead of reading or writing out of bounds."""
    outside = cuda_backend.to(torch.tensor([[0, 9, 1, 1], [0, 1, 1, 1]], dtype=torch.int32))
    broken = torch.full((2, 27), -1, dtype=torch.int32)
    broken[0, 0], broken[1, 3] = 3, 1
    with cuda_backend:
        neighbors = torch.ops.sparsevision.kernel_map(outside, outside, [4, 4, 4], [3] * 3, [1] * 3, [1] * 3,
                                                      [1] * 3, sites_checked=True)
        inverse = torch.ops.sparsevision.invert_kernel_map(cuda_backend.to(broken), 3, map_checked=True)
    expected = torch.full((2, 27), -1, dtype=torch.int32)
    expected[1, 13] = 1
    assert torch.equal(neighbors.cpu(), expected)
    assert inverse.cpu()[1, 3] == 1 and (inverse.cpu() >= 0).sum() == 1


def native_reads(function) -> int:
    """How many ops under ``function`` made the host wait for the device, nested calls in native kernels included
    (the profiler sees those; check_indices' own read is counted apart, by its amin)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        function()
    return sum(event.name in SYNCING_OPS for event in profiler.events())


def test_map_builds_on_checked_sites_wait_only_for_output_sizes(cuda_backend):
    shape = [12, 15, 18]
    with cuda_backend:
        sites = ops.check_indices(cuda_backend.to(random_sites(800, shape)), shape)
        assert native_reads(lambda: ops.submanifold_kernel_map(sites, shape, 3)) == 1   # finds no duplicate
        assert native_reads(lambda: ops.submanifold_kernel_map(sites, shape, 5)) == 0
        outputs, out_shape = ops.downsample_indices(sites, shape, 2, 2)   # waits once, for the number of outputs
        with HostSyncs() as python_ops:
            assert native_reads(lambda: ops.downsample_indices(sites, shape, 2, 2)) == 1
            neighbors = ops.build_kernel_map(sites, outputs, shape, 2, 2)
            assert native_reads(lambda: ops.invert_kernel_map(neighbors, sites.shape[0])) == 0
            assert native_reads(lambda: ops.submanifold_kernel_map(outputs, out_shape, 3)) == 0
        assert python_ops.ops['aten::amin'] == 0   # nor were the sites' ranges read again
        handmade = cuda_backend.to(torch.tensor([[0, -1], [1, 0]], dtype=torch.int32))
        assert native_reads(lambda: ops.invert_kernel_map(handmade, 2)) == 1


def test_entries_below_minus_one_are_refused_by_the_cpu_inversion_too():
    below = torch.full((2, 3), -1, dtype=torch.int32)
    below[0, 1] = -5
    with pytest.raises(ValueError, match='kernel map entries'):
        torch.ops.sparsevision.invert_kernel_map(below, 3)


def test_row_counts_beyond_int32_are_refused_before_any_work(cuda_backend):
    """2^31 rows do not fit the int32 map entries: a clear error, raised on the sizes alone (the rows are a
    broadcast view, never materialised)."""
    rows = 2**31
    many_sites = cuda_backend.to(torch.zeros(1, 4, dtype=torch.int32)).expand(rows, 4)
    few_sites = cuda_backend.to(torch.zeros(1, 4, dtype=torch.int32))
    with cuda_backend:
        with pytest.raises(ValueError, match='2147483647'):
            torch.ops.sparsevision.kernel_map(many_sites, few_sites, [4, 4, 4], [3] * 3, [1] * 3, [1] * 3, [1] * 3)
        with pytest.raises(ValueError, match='2147483647'):
            torch.ops.sparsevision.invert_kernel_map(cuda_backend.to(torch.zeros(1, 1, dtype=torch.int32)), rows)


def _on_meta(tensor):
    return torch.empty_like(tensor, device='meta')


def test_cuda_entry_points_refuse_tensors_on_other_devices():
    """The CUDA C++ entry points check that every tensor sits on the first one's device. The check runs before any
    data is read, so the emulated kernels show it with a meta tensor standing in for the stray device."""
    from cuda_emulation import load
    load()
    cpu = torch._C.DispatchKeySet('CPU')
    sites = random_sites(20, [6, 6, 6])
    features, weight = torch.randn(20, 4), torch.randn(27, 4, 8)
    neighbors = ops.submanifold_kernel_map(sites, [6, 6, 6], 3)
    emulated = torch.ops.sv_emu
    calls = {
        'kernel_map': (emulated.kernel_map.default, (sites, _on_meta(sites), [6] * 3, [3] * 3, [1] * 3, [1] * 3,
                                                     [1] * 3)),
        'gather_gemm_conv': (emulated.gather_gemm_conv.default, (features, weight, _on_meta(neighbors), neighbors,
                                                                 1)),
        'weight grad': (emulated.gather_gemm_conv_weight_grad.default, (features, _on_meta(torch.randn(20, 8)),
                                                                        neighbors, neighbors, 1)),
    }
    for name, (op, arguments) in calls.items():
        with pytest.raises(ValueError, match='meta'):
            op.redispatch(cpu, *arguments)


@requires_cuda_kernels
def test_cuda_ops_refuse_cpu_maps_and_indices():
    sites = random_sites(20, [6, 6, 6])
    neighbors = ops.submanifold_kernel_map(sites, [6, 6, 6], 3)
    features, weight = torch.randn(20, 4, device='cuda'), torch.randn(27, 4, 8, device='cuda')
    with pytest.raises(ValueError, match='cpu'):
        ops.sparse_conv(features, weight, neighbors, neighbors, 1)
    with pytest.raises(ValueError, match='cpu'):
        torch.ops.sparsevision.kernel_map(sites.cuda(), sites, [6] * 3, [3] * 3, [1] * 3, [1] * 3, [1] * 3)


def conv_case(count, groups, in_per_group, out_per_group, dtype, strided=False, seed=0):
    shape = [10, 12, 14]
    sites = random_sites(count, shape, seed=seed)
    if strided:
        outputs, _ = ops.downsample_indices(sites, shape, 3, 2, 1)
        neighbors = ops.build_kernel_map(sites, outputs, shape, 3, 2, 1)
    else:
        neighbors = ops.submanifold_kernel_map(sites, shape, 3)
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(count, groups * in_per_group, generator=generator, dtype=torch.float64).to(dtype)
    weight = torch.randn(27, in_per_group, groups * out_per_group, generator=generator, dtype=torch.float64).to(dtype)
    return features, weight, neighbors, ops.invert_kernel_map(neighbors, count)


def on_cuda_path(cuda_backend):
    """The CUDA C++ convolution (the gather-GEMM path) on ``cuda_backend``."""
    return use_conv_algorithm(ConvAlgorithm.GATHER_GEMM) if cuda_backend.name == 'cuda' else contextlib.nullcontext()


@pytest.mark.parametrize('groups, in_per_group, out_per_group', [(1, 16, 32), (1, 3, 5), (4, 2, 3), (16, 1, 1)])
@pytest.mark.parametrize('strided', [False, True])
def test_conv_matches_reference(cuda_backend, groups, in_per_group, out_per_group, strided):
    case = conv_case(800, groups, in_per_group, out_per_group, torch.float64, strided)
    expected = reference.sparse_conv(*case, groups)
    grad_output = torch.randn_like(expected)
    expected_grad = reference.sparse_conv_weight_grad(case[0], grad_output, *case[2:], groups)
    features, weight, neighbors, inverse = map(cuda_backend.to, case)
    with cuda_backend, on_cuda_path(cuda_backend):
        out = ops.sparse_conv(features, weight, neighbors, inverse, groups)
        grad_weight = WEIGHT_GRAD(features, cuda_backend.to(grad_output), neighbors, inverse, groups)
    torch.testing.assert_close(out.cpu(), expected)
    torch.testing.assert_close(grad_weight.cpu(), expected_grad)


def rounding_mismatches(result, exact):
    """The fraction of ``result`` that differs from ``exact`` (float64) rounded once to ``result``'s dtype."""
    return (result.cpu() != exact.to(result.dtype)).double().mean().item()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize('groups, in_per_group, out_per_group', [(1, 32, 32), (4, 8, 8), (32, 1, 1)])
def test_reduced_precision_is_rounded_once(cuda_backend, dtype, groups, in_per_group, out_per_group):
    """Half and bfloat16 products and sums stay in float32 and are rounded once, at the end: nearly every output then
    equals the exact result rounded to the dtype (rounding each tap's product made ~40 % of them differ)."""
    features, weight, neighbors, inverse = conv_case(1500, groups, in_per_group, out_per_group, dtype)
    grad_output = torch.randn(neighbors.shape[0], groups * out_per_group, dtype=torch.float64).to(dtype)
    exact = reference.sparse_conv(features.double(), weight.double(), neighbors, inverse, groups)
    exact_grad = reference.sparse_conv_weight_grad(features.double(), grad_output.double(), neighbors, inverse, groups)
    cpu_out = ops.sparse_conv(features, weight, neighbors, inverse, groups)
    with cuda_backend, on_cuda_path(cuda_backend):
        out = ops.sparse_conv(*map(cuda_backend.to, (features, weight, neighbors, inverse)), groups)
        grad_weight = WEIGHT_GRAD(*map(cuda_backend.to, (features, grad_output, neighbors, inverse)), groups)
    assert out.dtype == dtype and grad_weight.dtype == dtype
    assert rounding_mismatches(cpu_out, exact) < 0.01
    assert rounding_mismatches(out, exact) < 0.01
    assert rounding_mismatches(grad_weight, exact_grad) < 0.01


def test_bitwise_reproducible(cuda_backend):
    features, weight, neighbors, inverse = map(cuda_backend.to, conv_case(3000, 1, 32, 64, torch.float32, seed=1))
    grad_output = cuda_backend.to(torch.randn(neighbors.shape[0], 64))
    with cuda_backend, on_cuda_path(cuda_backend):
        first = (SPARSE_CONV(features, weight, neighbors, inverse, 1),
                 WEIGHT_GRAD(features, grad_output, neighbors, inverse, 1))
        for _ in range(2):
            again = (SPARSE_CONV(features, weight, neighbors, inverse, 1),
                     WEIGHT_GRAD(features, grad_output, neighbors, inverse, 1))
            assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_gradcheck(cuda_backend):
    case = conv_case(30, 2, 2, 3, torch.float64, strided=True)
    features, weight, neighbors, inverse = map(cuda_backend.to, case)
    inputs = (features.requires_grad_(), weight.requires_grad_())
    with cuda_backend, on_cuda_path(cuda_backend):
        assert torch.autograd.gradcheck(lambda x, w: ops.sparse_conv(x, w, neighbors, inverse, 2), inputs)
        assert torch.autograd.gradgradcheck(lambda x, w: ops.sparse_conv(x, w, neighbors, inverse, 2), inputs)


def test_emulated_convolution_launches_a_fixed_number_of_kernels():
    """One gather and one add per present tap: the launch count the emulation records."""
    from cuda_emulation import Backend
    features, weight, neighbors, inverse = conv_case(200, 1, 8, 8, torch.float32)
    present_taps = int((neighbors >= 0).any(0).sum())
    with Backend('emulated'):
        before = launch_count()
        ops.sparse_conv(features, weight, neighbors, inverse, 1)
        assert launch_count() - before == 2 * present_taps


@requires_cuda_kernels
def test_opcheck():
    features, weight, neighbors, inverse = (t.cuda() for t in conv_case(30, 2, 2, 3, torch.float64, strided=True))
    torch.library.opcheck(SPARSE_CONV, (features, weight, neighbors, inverse, 2))
    sites = random_sites(200, [8, 8, 8]).cuda()
    torch.library.opcheck(torch.ops.sparsevision.kernel_map.default,
                          (sites, sites, [8, 8, 8], [3] * 3, [1] * 3, [1] * 3, [1] * 3))


def test_python_entry_points_refuse_tensors_on_other_devices():
    """The Python wrappers and SparseTensor name both devices before any kernel runs (a meta tensor stands in for the
    stray device here; on a GPU, test_cuda_ops_refuse_cpu_maps_and_indices does the same with CUDA)."""
    from sparsevision.sparse import SparseTensor
    sites = random_sites(20, [6, 6, 6])
    features = torch.randn(20, 4)
    with pytest.raises(ValueError, match='out_indices is on meta but in_indices is on cpu'):
        ops.build_kernel_map(sites, _on_meta(sites), [6] * 3, 3, 1, 1)
    with pytest.raises(ValueError, match='indices is on cpu but features is on meta'):
        SparseTensor(_on_meta(features), sites, [6] * 3, 2)
    tensor = SparseTensor(features, sites, [6] * 3, 2)
    with pytest.raises(ValueError, match='indices is on cpu but features is on meta'):
        tensor.replace_feature(_on_meta(features))
    with pytest.raises(ValueError, match='indices is on cpu but features is on meta'):
        tensor.features = _on_meta(features)
