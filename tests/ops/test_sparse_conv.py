"""sparse_conv and sparse_conv_weight_grad against the reference: random, adversarial, gradients, opcheck."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsevision.ops as ops
from sparsevision.ops import reference
from sparsevision.ops.coordinates import keys_to_coordinates

SPARSE_CONV = torch.ops.sparsevision.sparse_conv.default
WEIGHT_GRAD = torch.ops.sparsevision.sparse_conv_weight_grad.default


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
                               reference.sparse_conv_weight_grad(features, grad_output, neighbors, inverse, groups), **tolerance)


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
    torch.library.opcheck(WEIGHT_GRAD, (features.detach(), torch.randn(neighbors.shape[0], 8, dtype=torch.float64,
                                                                        requires_grad=True), neighbors, inverse, 2))


# (sites, in, out): register-blocked rows (32 x 64 channels; 24 outputs zero-padded to 32), and the wide row-block path
# (weight over 256 KB; 48-channel chunks for 96 outputs), whose row blocks depend on the thread count.
@pytest.mark.parametrize('count, in_per_group, out_per_group', [(4000, 32, 64), (4000, 32, 24), (4000, 32, 256),
                                                                 (1500, 96, 96), (4500, 96, 96), (4500, 64, 64),
                                                                 (4000, 20, 384), (4000, 32, 4), (4000, 20, 7)])
def test_bitwise_identical_across_threads(count, in_per_group, out_per_group):
    features, weight, neighbors, inverse = make_case(count, [20, 20, 20], 1, in_per_group, out_per_group,
                                                     torch.float32)
    grad_output = torch.randn(neighbors.shape[0], out_per_group)
    previous = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 2):
            torch.set_num_threads(count)
            results.append((SPARSE_CONV(features, weight, neighbors, inverse, 1),
                            WEIGHT_GRAD(features, grad_output, neighbors, inverse, 1)))
    finally:
        torch.set_num_threads(previous)
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


# At most 8 outputs: each a dot product along the input channels. 32 inputs are read in place (two vectors), 20 and
# 3 through a zero-padded copy; 1, 4, 5 and 8 outputs pad the packed weight to 4 or 8 outputs, or fill it.
@pytest.mark.parametrize('in_channels', [32, 20, 3])
@pytest.mark.parametrize('out_channels', [1, 4, 5, 8])
@pytest.mark.parametrize('strided', [False, True])
def test_narrow_outputs_against_reference(in_channels, out_channels, strided):
    features, weight, neighbors, inverse = make_case(700, [10, 10, 10], 1, in_channels, out_channels, seed=5,
                                                     strided=strided)
    assert_matches_reference(features, weight, neighbors, inverse, 1)
    expected = reference.sparse_conv(features, weight, neighbors, inverse, 1)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
        rounded = features.to(dtype), weight.to(dtype)
        exact = reference.sparse_conv(*(tensor.double() for tensor in rounded), neighbors, inverse, 1)
        out = ops.sparse_conv(*rounded, neighbors, inverse, 1)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), exact, rtol=0, atol=tolerance * expected.abs().max().item())


def test_narrow_outputs_keep_non_finite_inputs_to_the_rows_that_read_them():
    """An inf input row reaches only the outputs whose map reads it (absent taps and padding lanes add nothing)."""
    features, weight, neighbors, inverse = make_case(300, [8, 8, 8], 1, 20, 4, torch.float32)
    features[7] = float('inf')
    out = ops.sparse_conv(features, weight, neighbors, inverse, 1)
    reads_row = (neighbors == 7).any(dim=1)
    assert reads_row.any() and not torch.isfinite(out[reads_row]).all(dim=1).any()
    assert torch.isfinite(out[~reads_row]).all()


def test_wide_path_adds_in_the_same_order_as_the_register_path():
    """A 64 -> 256 layer (weight over the wide threshold) equals, bitwise, its eight 32-channel slices (64 x 32 x 27
    taps = 221 KB: register path), and matches the reference in float64; 1,001 outputs leave a partial row block."""
    features, weight, neighbors, inverse = make_case(1001, [12, 12, 12], 1, 64, 256, torch.float32)
    wide = SPARSE_CONV(features, weight, neighbors, inverse, 1)
    for first in range(0, 256, 32):
        narrow = SPARSE_CONV(features, weight[:, :, first:first + 32].contiguous(), neighbors, inverse, 1)
        assert torch.equal(wide[:, first:first + 32], narrow)
    assert_matches_reference(features.double(), weight.double(), neighbors, inverse, 1)


def test_wide_path_matches_narrow_path_and_reference_at_256_channels():
    """256 -> 256: a 2-tap map whose second tap is empty (512 KB weight: wide path) gives exactly what the 1-tap map
    gives (256 KB: register path); rows of a 5,000-row map equal the same rows computed alone (other row blocks); and
    the result is within float32 rounding of the float64 reference."""
    generator = torch.Generator().manual_seed(3)
    count, channels = 300, 256
    features = torch.randn(count, channels, generator=generator)
    weight = torch.randn(2, channels, channels, generator=generator) / channels ** 0.5
    neighbors = torch.randperm(count, generator=generator)[:200].to(torch.int32).unsqueeze(1)
    neighbors[::7] = -1
    two_taps = torch.cat([neighbors, torch.full_like(neighbors, -1)], dim=1)
    narrow = SPARSE_CONV(features, weight[:1].contiguous(), neighbors, ops.invert_kernel_map(neighbors, count), 1)
    wide = SPARSE_CONV(features, weight, two_taps, ops.invert_kernel_map(two_taps, count), 1)
    assert torch.equal(wide, narrow)

    features, weight, neighbors, inverse = make_case(5000, [20, 20, 20], 1, channels, channels, torch.float32)
    weight = weight / channels ** 0.5
    out = SPARSE_CONV(features, weight, neighbors, inverse, 1)
    rows = torch.arange(0, neighbors.shape[0], 5)   # 1000 rows
    subset = neighbors[rows].contiguous()
    assert torch.equal(SPARSE_CONV(features, weight, subset, ops.invert_kernel_map(subset, features.shape[0]), 1),
                       out[rows])
    expected = reference.sparse_conv(features.double(), weight.double(), neighbors, inverse, 1)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    grad_output = torch.randn(neighbors.shape[0], channels, dtype=torch.float64)
    torch.testing.assert_close(WEIGHT_GRAD(features, grad_output.float(), neighbors, inverse, 1).double(),
                               reference.sparse_conv_weight_grad(features.double(), grad_output, neighbors, inverse, 1),
                               rtol=1e-4, atol=1e-3)


# 27 * 40 * 80 * 4 bytes > 256 KB: the wide path in 16-channel chunks.
@pytest.mark.parametrize('in_channels, out_channels', [(256, 256), (40, 80)])
def test_wide_path_bitwise_across_threads_in_reduced_precision(in_channels, out_channels):
    features, weight, neighbors, inverse = make_case(4200, [20, 20, 20], 1, in_channels, out_channels, torch.float32)
    grad_output = torch.randn(neighbors.shape[0], out_channels)
    previous = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append((SPARSE_CONV(features, weight, neighbors, inverse, 1),
                            WEIGHT_GRAD(features, grad_output, neighbors, inverse, 1),
                            SPARSE_CONV(features.bfloat16(), weight.bfloat16(), neighbors, inverse, 1),
                            WEIGHT_GRAD(features.half(), grad_output.half(), neighbors, inverse, 1)))
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(*results))
    expected = reference.sparse_conv(features.double(), weight.double(), neighbors, inverse, 1)
    torch.testing.assert_close(results[0][0].double(), expected, rtol=1e-4, atol=1e-3)


def test_kernel_one_layers_take_the_blocked_path_and_add_in_the_register_path_order():
    """A 1-tap 96 -> 128 map (blocked path whatever its weight size) gives bitwise what the same map with an empty
    second tap gives (2 x 96 x 128 float32 = 96 KB: register path), at 1 and 2 threads, and matches the reference."""
    generator = torch.Generator().manual_seed(4)
    count = 3000
    features = torch.randn(count, 96, generator=generator)
    weight = torch.randn(1, 96, 128, generator=generator)
    neighbors = torch.randperm(count, generator=generator)[:2500].to(torch.int32).unsqueeze(1)
    neighbors[::9] = -1
    two_taps = torch.cat([neighbors, torch.full_like(neighbors, -1)], dim=1)
    padded_weight = torch.cat([weight, torch.randn(1, 96, 128, generator=generator)])
    register_path = SPARSE_CONV(features, padded_weight, two_taps, ops.invert_kernel_map(two_taps, count), 1)
    inverse = ops.invert_kernel_map(neighbors, count)
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(SPARSE_CONV(features, weight, neighbors, inverse, 1), register_path)
    finally:
        torch.set_num_threads(previous)
    expected = reference.sparse_conv(features.double(), weight.double(), neighbors, inverse, 1)
    torch.testing.assert_close(register_path.double(), expected, rtol=1e-5, atol=1e-4)


def test_wide_path_in_48_channel_chunks_adds_in_the_register_path_order():
    """64 -> 96 (663 KB weight: wide path, 48-channel chunks) equals, bitwise, its three 32-channel slices (register
    path)."""
    features, weight, neighbors, inverse = make_case(700, [12, 12, 12], 1, 64, 96, torch.float32)
    wide = SPARSE_CONV(features, weight, neighbors, inverse, 1)
    for first in range(0, 96, 32):
        narrow = SPARSE_CONV(features, weight[:, :, first:first + 32].contiguous(), neighbors, inverse, 1)
        assert torch.equal(wide[:, first:first + 32], narrow)


# Every kernel path (narrow outputs, register 64/32, generic, wide in 64/48/16-channel chunks) reads a weight view of any strides, as
# the layers pass spconv's [out, taps, in] memory and the backward the transposed weight, without a copy.
@pytest.mark.parametrize('in_channels, out_channels', [(32, 64), (20, 32), (32, 24), (64, 256), (64, 96), (40, 80),
                                                       (32, 4), (20, 7)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_weight_views_give_the_contiguous_result(in_channels, out_channels, dtype):
    features, _, neighbors, inverse = make_case(600, [10, 10, 10], 1, in_channels, out_channels, dtype)
    spconv_layout = torch.randn(out_channels, neighbors.shape[1], in_channels, dtype=torch.float64).to(dtype)
    view = spconv_layout.permute(1, 2, 0)                            # [taps, in, out], out slowest
    transposed = view.contiguous().transpose(1, 2).contiguous().transpose(1, 2)   # in fastest
    assert not view.is_contiguous() and not transposed.is_contiguous()
    expected = SPARSE_CONV(features, view.contiguous(), neighbors, inverse, 1)
    assert torch.equal(SPARSE_CONV(features, view, neighbors, inverse, 1), expected)
    assert torch.equal(SPARSE_CONV(features, transposed, neighbors, inverse, 1), expected)


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
