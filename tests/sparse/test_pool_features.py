"""pool_features: the fill-row gather equals the per-tap selection it replaced, bit for bit, without a host sync."""
import pytest
import torch
from sparsevision.utils.host_syncs import HostSyncs

from sparsevision.sparse.pool import pool_features


def pool_by_selection(features, neighbors, mode):
    """The former implementation: one nonzero (a host sync on CUDA) per tap, then index_put of the present rows."""
    fill = float('-inf') if mode == 'max' else 0.0
    pooled = features.new_full((neighbors.shape[0], features.shape[1]), fill)
    for tap in range(neighbors.shape[1]):
        rows = (neighbors[:, tap] >= 0).nonzero().flatten()
        gathered = features[neighbors[rows, tap].long()]
        pooled = pooled.index_put((rows,), torch.maximum(pooled[rows], gathered) if mode == 'max'
                                  else pooled[rows] + gathered)
    if mode == 'avg':
        pooled = pooled / (neighbors >= 0).sum(dim=1, keepdim=True).clamp(min=1).to(pooled.dtype)
    return pooled


def make_case(dtype, inputs=300, outputs=200, taps=27, channels=13):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(inputs, channels, generator=generator).to(dtype)
    features[5, 3], features[7] = float('nan'), float('-inf')
    features[9, 2] = -0.0
    neighbors = torch.randint(-1, inputs, (outputs, taps), generator=generator, dtype=torch.int32)
    neighbors[:10] = -1          # rows without any present tap
    neighbors[20:30, :20] = -1
    neighbors[40:50] = 7         # every tap on the -inf row
    return features, neighbors


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize('mode', ['max', 'avg'])
def test_equals_the_per_tap_selection_bitwise_with_gradients(mode, dtype):
    features, neighbors = make_case(dtype)
    results = []
    for pool in (pool_features, pool_by_selection):
        inputs = features.clone().requires_grad_()
        out = pool(inputs, neighbors, mode)
        out.nan_to_num(0.0, 0.0, 0.0).sum().backward()
        results.append((out.detach(), inputs.grad))
    (out, grad), (expected_out, expected_grad) = results
    assert torch.equal(out.isnan(), expected_out.isnan()) and torch.equal(out.nan_to_num(), expected_out.nan_to_num())
    assert torch.equal(out.signbit(), expected_out.signbit())
    assert torch.equal(grad.nan_to_num(), expected_grad.nan_to_num())


@pytest.mark.parametrize('mode', ['max', 'avg'])
def test_no_host_sync_once_the_map_is_checked(mode):
    features, neighbors = make_case(torch.float32)
    with HostSyncs() as first_call:
        pool_features(features, neighbors, mode)
    assert first_call.seen == ['aten::_local_scalar_dense']   # the map's range check, once (builders' maps skip it)
    with HostSyncs() as later_calls:
        pool_features(features, neighbors, mode)
    assert later_calls.seen == []
    with HostSyncs() as recorder:
        pool_by_selection(features, neighbors, mode)
    assert recorder.seen   # the recorder sees what it looks for


def test_map_entries_outside_the_inputs_are_refused():
    features, neighbors = make_case(torch.float32)
    for bad in (len(features), -2):
        broken = neighbors.clone()
        broken[3, 4] = bad
        with pytest.raises(ValueError, match='kernel map entries'):
            pool_features(features, broken, 'max')
