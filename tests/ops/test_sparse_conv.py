"""sparse_conv and sparse_conv_weight_grad against the reference: random, adversarial, gradients, opcheck; the named
CPU paths: the choice, forcing, each path against the reference and the bitwise properties between them."""
import contextlib
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsevision.ops as ops
from sparsevision.ops import reference
from sparsevision.ops.conv_algorithms import (ConvAlgorithm, WeightGradAlgorithm, conv_algorithm,
                                              forced_conv_algorithm, use_conv_algorithm, weight_grad_algorithm)
from sparsevision.ops.coordinates import keys_to_coordinates

SPARSE_CONV = torch.ops.sparsevision.sparse_conv.default
WEIGHT_GRAD = torch.ops.sparsevision.sparse_conv_weight_grad.default
ROW_PAIRS, ROW_BLOCKS = ConvAlgorithm.ROW_PAIRS, ConvAlgorithm.ROW_BLOCKS
NARROW_OUTPUTS, GROUPED = ConvAlgorithm.NARROW_OUTPUTS, ConvAlgorithm.GROUPED
CPU_ALGORITHMS = [algorithm for algorithm in ConvAlgorithm if algorithm.device_type == 'cpu']
requires_native = pytest.mark.skipif(not ops.extension_info().cpu_kernels,
                                     reason='the CPU paths are the native kernels (the reference has none)')


def make_case(count, shape, groups, in_per_group, out_per_group, dtype=torch.float64, seed=0, strided=False):
    generator = torch.Generator().manual_seed(seed)
    cells = 2 * int(torch.tensor(shape).prod())
    sites = keys_to_coordinates(torch.randperm(cells, generator=generator)[:count], shape)
    if strided:
        outputs, _ = ops.downsample_indices(sites, shape, 3, 2, 1)
        neighbors = ops.build_kernel_map(sites, outputs, shape, 3, 2, 1)
    else:
        neighbors = ops.submanifold_kernel_map(sites, shape, 3)
    inverse = ops.invert_kernel_map(neighbors, count)
    features = torch.randn(count, groups * in_per_group, generator=generator, dtype=torch.float64).to(dtype)
    weight = torch.randn(neighbors.shape[1], in_per_group, groups * out_per_group, generator=generator,
                         dtype=torch.float64).to(dtype)
    return features, weight, neighbors, inverse


def assert_matches_reference(features, weight, neighbors, inverse, groups):
    out = ops.sparse_conv(features, weight, neighbors, inverse, groups)
    expected = reference.sparse_conv(features, weight, neighbors, inverse, groups)
    tolerance = dict(rtol=1e-12, atol=1e-12) if features.dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out, expected, **tolerance)
    grad_output = torch.randn_like(out)
    torch.testing.assert_close(WEIGHT_GRAD(features, grad_output, neighbors, inverse, groups),
                               reference.sparse_conv_weight_grad(features, grad_output, neighbors, inverse, groups),
                               **tolerance)


@settings(max_examples=60, deadline=None)
@given(count=st.integers(0, 150), groups=st.sampled_from([1, 2, 3]), in_per_group=st.integers(1, 9),
       out_per_group=st.sampled_from([1, 5, 16, 32, 64]), strided=st.booleans(), seed=st.integers(0, 1000),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_random_against_reference(count, groups, in_per_group, out_per_group, strided, seed, dtype):
    features, weight, neighbors, inverse = make_case(count, [5, 6, 7], groups, in_per_group, out_per_group, dtype,
                                                     seed, strided)
    assert_matches_reference(features, weight, neighbors, inverse, groups)


@pytest.mark.parametrize('case', ['empty_map', 'no_neighbors', 'single_site', 'depthwise', 'wide_channels',
                                  'all_taps_same_input'])
def test_adversarial(case):
    if case == 'empty_map':
        features, weight = torch.randn(3, 4, dtype=torch.float64), torch.randn(27, 4, 8, dtype=torch.float64)
        neighbors, inverse = torch.zeros(0, 27, dtype=torch.int32), torch.full((3, 27), -1, dtype=torch.int32)
        groups = 1
    elif case == 'no_neighbors':
        features, weight = torch.randn(3, 4, dtype=torch.float64), torch.randn(27, 4, 8, dtype=torch.float64)
        neighbors = torch.full((5, 27), -1, dtype=torch.int32)
        inverse, groups = torch.full((3, 27), -1, dtype=torch.int32), 1
    elif case == 'single_site':
        features, weight, neighbors, inverse = make_case(1, [3, 3, 3], 1, 4, 64)
        groups = 1
    elif case == 'depthwise':
        features, weight, neighbors, inverse = make_case(200, [6, 6, 6], 16, 1, 1)
        groups = 16
    elif case == 'wide_channels':
        features, weight, neighbors, inverse = make_case(60, [4, 5, 6], 1, 130, 192)
        groups = 1
    else:   # a 1x1x1 "kernel" of 27 taps that all read input 0
        features, weight = torch.randn(4, 8, dtype=torch.float64), torch.randn(27, 8, 16, dtype=torch.float64)
        neighbors = torch.zeros(2, 27, dtype=torch.int32)
        inverse, groups = torch.full((4, 27), -1, dtype=torch.int32), 1
    assert_matches_reference(features, weight, neighbors, inverse, groups)


def test_reduced_precision_accumulates_in_float32():
    features, weight, neighbors, inverse = make_case(300, [6, 7, 8], 1, 16, 16, torch.float32)
    expected = reference.sparse_conv(features, weight, neighbors, inverse, 1)
    for dtype in (torch.bfloat16, torch.float16):
        out = ops.sparse_conv(features.to(dtype), weight.to(dtype), neighbors, inverse, 1)
        reference_low = reference.sparse_conv(features.to(dtype), weight.to(dtype), neighbors, inverse, 1)
        torch.testing.assert_close(out.float(), reference_low.float(), rtol=1e-2, atol=1e-2)
        scale = expected.abs().max().item()   # inputs rounded to 8 (bf16) or 11 (fp16) bits: error relative to scale
        torch.testing.assert_close(out.float(), expected, rtol=0, atol=2e-2 * scale)


@pytest.mark.parametrize('strided', [False, True])
@pytest.mark.parametrize('groups', [1, 2])
def test_gradcheck_float64(strided, groups):
    features, weight, neighbors, inverse = make_case(25, [4, 4, 4], groups, 2, 3, strided=strided)
    inputs = (features.requires_grad_(), weight.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, w: ops.sparse_conv(x, w, neighbors, inverse, groups), inputs)
    assert torch.autograd.gradgradcheck(lambda x, w: ops.sparse_conv(x, w, neighbors, inverse, groups), inputs)


@pytest.mark.parametrize('strided', [False, True])
def test_gradcheck_float64_through_an_out_major_weight_view(strided):
    """The layers' view of spconv's [out, taps, in] weight (16 input channels: the transposed weight gradient)."""
    features, _, neighbors, inverse = make_case(20, [4, 4, 4], 1, 16, 2, strided=strided)
    spconv_layout = torch.randn(2, neighbors.shape[1], 16, dtype=torch.float64, requires_grad=True)
    inputs = (features.requires_grad_(), spconv_layout)

    def run(x, w):
        return ops.sparse_conv(x, w.permute(1, 2, 0), neighbors, inverse, 1)
    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


def test_out_major_weight_gets_its_gradient_with_contiguous_rows():
    """The [out, taps, in] parameter's gradient arrives with contiguous input-channel rows (stored by a row copy, not
    an element-wise transpose) and equals the reference."""
    features, _, neighbors, inverse = make_case(300, [8, 8, 8], 1, 32, 48)
    spconv_layout = torch.randn(48, neighbors.shape[1], 32, dtype=torch.float64, requires_grad=True)
    out = ops.sparse_conv(features, spconv_layout.permute(1, 2, 0), neighbors, inverse, 1)
    grad_output = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, spconv_layout, grad_output)
    assert grad.stride(2) == 1 and grad.stride(0) == 32
    expected = reference.sparse_conv_weight_grad(features, grad_output, neighbors, inverse, 1).permute(2, 0, 1)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_opcheck():
    features, weight, neighbors, inverse = make_case(80, [5, 5, 5], 2, 3, 4, strided=True)
    torch.library.opcheck(SPARSE_CONV, (features.requires_grad_(), weight.requires_grad_(), neighbors, inverse, 2))
    grad_output = torch.randn(neighbors.shape[0], 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(WEIGHT_GRAD, (features.detach(), grad_output, neighbors, inverse, 2))


@contextlib.contextmanager
def threads(count):
    """Runs the block with ``count`` intra-op threads, then restores the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def algorithms_taking(features, weight, groups):
    """The CPU paths that can take this layer (forcing any other one raises ValueError)."""
    taking = []
    for algorithm in CPU_ALGORITHMS:
        with use_conv_algorithm(algorithm):
            try:
                conv_algorithm(features, weight, groups)
            except ValueError:
                continue
        taking.append(algorithm)
    return taking


ANY_LAYER = {ROW_PAIRS, ROW_BLOCKS, GROUPED}


# (in, out, taps, groups, dtype): the path the shapes choose, and the weight gradient's.
@requires_native
@pytest.mark.parametrize('in_channels, out_channels, taps, groups, dtype, expected', [
    (32, 4, 27, 1, torch.float32, NARROW_OUTPUTS),     # at most kNarrowOutputs outputs
    (4, 8, 125, 1, torch.float64, NARROW_OUTPUTS),
    (32, 9, 27, 1, torch.float32, ROW_PAIRS),          # padded to 16 outputs: 55 KB weight
    (32, 64, 27, 1, torch.float32, ROW_PAIRS),         # 221 KB: not over kWideWeightBytes
    (64, 64, 27, 1, torch.float32, ROW_BLOCKS),        # 442 KB
    (32, 64, 27, 1, torch.float64, ROW_BLOCKS),        # the same layer in float64: 442 KB
    (32, 64, 27, 1, torch.bfloat16, ROW_PAIRS),        # accumulates in float32: 221 KB
    (38, 56, 27, 1, torch.float32, ROW_BLOCKS),        # 230 KB, but 263 KB once padded to 64 outputs
    (96, 128, 1, 1, torch.float32, ROW_BLOCKS),        # kernel-1 layers whatever their weight size
    (4, 16, 1, 1, torch.float32, ROW_BLOCKS),
    (2, 4, 27, 2, torch.float32, GROUPED),             # grouped, however narrow
    (16, 16, 27, 16, torch.float16, GROUPED),          # depthwise
])
def test_the_shapes_choose_the_documented_path(in_channels, out_channels, taps, groups, dtype, expected):
    features = torch.zeros(3, in_channels, dtype=dtype)
    weight = torch.zeros(taps, in_channels // groups, out_channels, dtype=dtype)
    assert conv_algorithm(features, weight, groups) is expected
    assert weight_grad_algorithm(groups) is WeightGradAlgorithm('register_tiles' if groups == 1 else 'grouped')


@requires_native
@pytest.mark.parametrize('algorithm, groups, out_channels, message', [
    (NARROW_OUTPUTS, 1, 9, 'needs groups == 1 and at most 8 outputs'),
    (NARROW_OUTPUTS, 2, 4, 'needs groups == 1 and at most 8 outputs'),
    (ROW_PAIRS, 2, 16, 'needs groups == 1'),
    (ROW_BLOCKS, 4, 16, 'needs groups == 1'),
    (ConvAlgorithm.IMPLICIT_GEMM, 1, 16, 'not a CPU path'),
    (ConvAlgorithm.GATHER_GEMM, 1, 16, 'not a CPU path'),
])
def test_forcing_a_path_that_cannot_take_the_layer_raises(algorithm, groups, out_channels, message):
    features, weight, neighbors, inverse = make_case(40, [4, 4, 4], groups, 4, out_channels // groups)
    with use_conv_algorithm(algorithm):
        with pytest.raises(ValueError, match=message):
            conv_algorithm(features, weight, groups)
        with pytest.raises(ValueError, match=message):
            ops.sparse_conv(features, weight, neighbors, inverse, groups)


@requires_native
def test_a_forced_path_holds_in_its_thread_only_and_is_restored():
    features, weight = torch.zeros(3, 32), torch.zeros(27, 32, 64)
    seen_elsewhere = []
    with use_conv_algorithm(GROUPED):
        with use_conv_algorithm('row_blocks'):
            assert conv_algorithm(features, weight) is ROW_BLOCKS
            assert forced_conv_algorithm() is ROW_BLOCKS
        assert conv_algorithm(features, weight) is GROUPED
        other = threading.Thread(target=lambda: seen_elsewhere.append(conv_algorithm(features, weight)))
        other.start()
        other.join()
    assert seen_elsewhere == [ROW_PAIRS]
    assert conv_algorithm(features, weight) is ROW_PAIRS and forced_conv_algorithm() is None


# (groups, in/group, out/group, strided, the CPU paths that can take it). 32 inputs are read in place by the
# narrow-output path (two float32 vectors), 20 and 3 through a zero-padded copy; 7 and 24 outputs are zero-padded to
# 16 and 32 on the row paths; 96 outputs go in 96-channel chunks on the row blocks, 48 in 48-channel ones; 130 inputs
# leave partial vectors and input-channel slices.
PATH_CASES = [
    (1, 32, 4, False, {NARROW_OUTPUTS} | ANY_LAYER),
    (1, 20, 7, True, {NARROW_OUTPUTS} | ANY_LAYER),
    (1, 3, 1, False, {NARROW_OUTPUTS} | ANY_LAYER),
    (1, 32, 24, True, ANY_LAYER),
    (1, 32, 64, False, ANY_LAYER),
    (1, 20, 96, False, ANY_LAYER),
    (1, 40, 48, True, ANY_LAYER),
    (1, 130, 192, False, ANY_LAYER),
    (2, 3, 4, False, {GROUPED}),
    (16, 1, 1, True, {GROUPED}),
    (3, 5, 16, False, {GROUPED}),
]


@requires_native
@pytest.mark.parametrize('groups, in_per_group, out_per_group, strided, expected', PATH_CASES)
def test_every_path_that_takes_a_layer_matches_the_reference(groups, in_per_group, out_per_group, strided, expected):
    features, weight, neighbors, inverse = make_case(500, [10, 10, 10], groups, in_per_group, out_per_group, seed=5,
                                                     strided=strided)
    taking = algorithms_taking(features, weight, groups)
    assert set(taking) == expected
    exact = reference.sparse_conv(features, weight, neighbors, inverse, groups)
    for algorithm in taking:
        with use_conv_algorithm(algorithm):
            assert_matches_reference(features, weight, neighbors, inverse, groups)
            for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
                rounded = features.to(dtype), weight.to(dtype)
                expected_rounded = reference.sparse_conv(*(tensor.double() for tensor in rounded), neighbors, inverse,
                                                         groups)
                out = ops.sparse_conv(*rounded, neighbors, inverse, groups)
                assert out.dtype == dtype
                torch.testing.assert_close(out.double(), expected_rounded, rtol=0,
                                           atol=tolerance * exact.abs().max().item())


# Every path reads a weight view of any strides, as the layers pass spconv's [out, taps, in] memory and the backward
# the transposed weight, without a copy (layers with one input or output channel per group have no such views).
@requires_native
@pytest.mark.parametrize('groups, in_per_group, out_per_group, strided, expected',
                         [case for case in PATH_CASES if case[1] > 1 and case[2] > 1])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_weight_views_give_the_contiguous_result(groups, in_per_group, out_per_group, strided, expected, dtype):
    features, weight, neighbors, inverse = make_case(300, [10, 10, 10], groups, in_per_group, out_per_group, dtype,
                                                     strided=strided)
    spconv_layout = weight.permute(2, 0, 1).contiguous()
    view = spconv_layout.permute(1, 2, 0)                                         # [taps, in, out], out slowest
    transposed = weight.transpose(1, 2).contiguous().transpose(1, 2)              # in fastest
    assert not view.is_contiguous() and not transposed.is_contiguous()
    for algorithm in expected:
        with use_conv_algorithm(algorithm):
            contiguous = SPARSE_CONV(features, weight, neighbors, inverse, groups)
            assert torch.equal(SPARSE_CONV(features, view, neighbors, inverse, groups), contiguous)
            assert torch.equal(SPARSE_CONV(features, transposed, neighbors, inverse, groups), contiguous)


def test_narrow_outputs_keep_non_finite_inputs_to_the_rows_that_read_them():
    """An inf input row reaches only the outputs whose map reads it (absent taps and padding lanes add nothing)."""
    features, weight, neighbors, inverse = make_case(300, [8, 8, 8], 1, 20, 4, torch.float32)
    features[7] = float('inf')
    with use_conv_algorithm(NARROW_OUTPUTS):
        out = ops.sparse_conv(features, weight, neighbors, inverse, 1)
    reads_row = (neighbors == 7).any(dim=1)
    assert reads_row.any() and not torch.isfinite(out[reads_row]).all(dim=1).any()
    assert torch.isfinite(out[~reads_row]).all()


# The two row paths add taps, then input channels, in order, one multiply-add per channel: the same sums, bit for bit,
# at any thread count (the row blocks depend on it). 256 outputs go in 64-channel chunks, 96 in 96 (row blocks) or 32
# (row pairs), 80 in 16, 24 are zero-padded to 32; a kernel-1 map has rows without their one tap; 1,001 outputs leave
# a partial row block.
@requires_native
@pytest.mark.parametrize('count, in_channels, out_channels, kernel_one', [
    (1001, 64, 256, False), (700, 64, 96, False), (4200, 40, 80, False), (600, 32, 24, False), (3000, 96, 128, True),
    (300, 256, 256, False)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
def test_row_pairs_and_row_blocks_give_the_same_bits(count, in_channels, out_channels, kernel_one, dtype):
    features, weight, neighbors, inverse = make_case(count, [20, 20, 20], 1, in_channels, out_channels, dtype)
    if kernel_one:
        neighbors = neighbors[:, 13:14].contiguous()   # the centre tap, absent where no site is
        neighbors[::9] = -1
        weight, inverse = weight[13:14], ops.invert_kernel_map(neighbors, count)
    with threads(1), use_conv_algorithm(ROW_PAIRS):
        expected = SPARSE_CONV(features, weight, neighbors, inverse, 1)
    for count in (1, 2):
        with threads(count):
            for algorithm in (ROW_PAIRS, ROW_BLOCKS):
                with use_conv_algorithm(algorithm):
                    assert torch.equal(SPARSE_CONV(features, weight, neighbors, inverse, 1), expected)


@requires_native
@pytest.mark.parametrize('algorithm', CPU_ALGORITHMS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_each_row_is_the_same_whichever_rows_are_computed_with_it(algorithm, dtype):
    """Rows of a 5,000-row map equal the same rows computed alone (in other row blocks and thread splits)."""
    out_channels = 8 if algorithm is NARROW_OUTPUTS else 256
    features, weight, neighbors, inverse = make_case(5000, [20, 20, 20], 1, 64, out_channels, dtype)
    rows = torch.arange(0, neighbors.shape[0], 5)   # 1000 rows
    subset = neighbors[rows].contiguous()
    with use_conv_algorithm(algorithm):
        out = SPARSE_CONV(features, weight, neighbors, inverse, 1)
        alone = SPARSE_CONV(features, weight, subset, ops.invert_kernel_map(subset, features.shape[0]), 1)
    assert torch.equal(alone, out[rows])


# Every path and both weight-gradient paths sum each output in an order fixed by the shape: the same bits at 1 and 2
# threads (row blocks and weight-gradient row blocks are sized by the thread count).
@requires_native
@pytest.mark.parametrize('algorithm', CPU_ALGORITHMS)
@pytest.mark.parametrize('count, groups, in_per_group, out_per_group', [
    (4000, 1, 32, 64), (4000, 1, 32, 24), (4500, 1, 96, 96), (4000, 1, 20, 384), (4000, 1, 32, 4), (4000, 1, 20, 7),
    (4000, 4, 8, 8)])
def test_bitwise_identical_across_threads(algorithm, count, groups, in_per_group, out_per_group):
    features, weight, neighbors, inverse = make_case(count, [20, 20, 20], groups, in_per_group, out_per_group,
                                                     torch.float32)
    if algorithm not in algorithms_taking(features, weight, groups):
        pytest.skip(f'{algorithm.value} cannot take this layer')
    grad_output = torch.randn(neighbors.shape[0], groups * out_per_group)
    results = []
    for count in (1, 2, 2):
        with threads(count), use_conv_algorithm(algorithm):
            results.append((SPARSE_CONV(features, weight, neighbors, inverse, groups),
                            SPARSE_CONV(features.bfloat16(), weight.bfloat16(), neighbors, inverse, groups),
                            WEIGHT_GRAD(features, grad_output, neighbors, inverse, groups),
                            WEIGHT_GRAD(features.half(), grad_output.half(), neighbors, inverse, groups)))
    assert all(torch.equal(a, b) for result in results[1:] for a, b in zip(result, results[0]))


# The weight gradient walks blocks of output rows (512 to 2,048 here, so 3,000 rows are several), each tap's pairs in
# tiles: 30 inputs leave a partial group of 4 channels, 384 outputs two channel groups, 4 -> 32 is a stem.
@pytest.mark.parametrize('in_channels, out_channels', [(96, 96), (30, 48), (20, 384), (4, 32)])
def test_weight_gradient_over_many_row_blocks(in_channels, out_channels):
    features, _, neighbors, inverse = make_case(3000, [16, 16, 16], 1, in_channels, out_channels)
    grad_output = torch.randn(neighbors.shape[0], out_channels, dtype=torch.float64)
    expected = reference.sparse_conv_weight_grad(features, grad_output, neighbors, inverse, 1)
    torch.testing.assert_close(WEIGHT_GRAD(features, grad_output, neighbors, inverse, 1), expected,
                               rtol=1e-12, atol=1e-12)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        rounded_features, rounded_grad = features.to(dtype), grad_output.to(dtype)
        result = WEIGHT_GRAD(rounded_features, rounded_grad, neighbors, inverse, 1).double()
        exact = reference.sparse_conv_weight_grad(rounded_features.double(), rounded_grad.double(), neighbors,
                                                  inverse, 1)
        torch.testing.assert_close(result, exact, rtol=0, atol=tolerance * exact.abs().max().item())


@pytest.mark.parametrize('mutate, message', [
    (lambda f, w, n, i: (f, w[:, :2], n, i, 1), 'channels'),
    (lambda f, w, n, i: (f, w[:9], n, i, 1), 'taps'),
    (lambda f, w, n, i: (f, w, n, i, 5), 'groups'),
    (lambda f, w, n, i: (f, w.float(), n, i, 1), 'weight is torch.float32'),
])
def test_bad_arguments(mutate, message):
    with pytest.raises(ValueError, match=message):
        ops.sparse_conv(*mutate(*make_case(30, [4, 4, 4], 1, 4, 4)))


def test_native_op_rejects_out_of_range_maps():
    features, weight, neighbors, inverse = make_case(30, [4, 4, 4], 1, 4, 4)
    broken = neighbors.clone()
    broken[0, 0] = 30
    with pytest.raises(ValueError, match='kernel map entries'):
        SPARSE_CONV(features, weight, broken, inverse, 1)
