"""Sparse layers: dense-convolution oracle, spconv parity on real meshes, determinism, gradients, bad input."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import sparsevision.sparse as sv
from sparsevision.ops.coordinates import keys_to_coordinates


@contextlib.contextmanager
def threads(count):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def random_tensor(count, spatial_shape, batch_size, channels, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    cells = batch_size * int(torch.tensor(spatial_shape).prod())
    indices = keys_to_coordinates(torch.randperm(cells, generator=generator)[:count], spatial_shape)
    features = torch.randn(count, channels, generator=generator, dtype=dtype)
    return sv.SparseTensor(features, indices, spatial_shape, batch_size)


DENSE_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def dense_conv(layer, x):
    """The dense convolution the sparse layer must equal at its output sites."""
    weight = layer.weight.movedim(-1, 1)   # [out, in/g, *kernel]
    padding = [k // 2 * d for k, d in zip(layer.kernel_size, layer.dilation)] if layer.subm else layer.padding
    stride = 1 if layer.subm else layer.stride
    return DENSE_CONV[layer.ndim](x.dense(), weight, layer.bias, stride, padding, layer.dilation, layer.groups)


def at_sites(dense, tensor):
    return dense.movedim(1, -1)[tuple(tensor.indices.long().unbind(dim=1))]


@pytest.mark.parametrize('ndim, shape', [(1, [40]), (2, [9, 11]), (3, [6, 7, 8])])
@pytest.mark.parametrize('groups, in_channels, out_channels', [(1, 3, 5), (2, 4, 6), (4, 4, 4), (4, 4, 8)])
@pytest.mark.parametrize('subm', [True, False])
def test_equals_dense_convolution(ndim, shape, groups, in_channels, out_channels, subm):
    x = random_tensor(60, shape, 2, in_channels)
    dilation = 2 if ndim == 1 else 1
    layer_class = getattr(sv, f'SubMConv{ndim}d' if subm else f'SparseConv{ndim}d')
    arguments = dict(dilation=dilation, groups=groups) if subm else dict(stride=2, padding=1, dilation=dilation,
                                                                          groups=groups)
    layer = layer_class(in_channels, out_channels, 3, **arguments).double()
    out = layer(x)
    expected = dense_conv(layer, x)
    assert list(expected.shape[2:]) == out.spatial_shape
    torch.testing.assert_close(out.features, at_sites(expected, out), rtol=1e-12, atol=1e-12)
    if not subm:   # every output site is one the dense convolution's receptive field reaches
        reached = DENSE_CONV[ndim](x.replace_feature(torch.ones_like(x.features[:, :1])).dense(),
                                   torch.ones(1, 1, *layer.kernel_size, dtype=torch.float64), None, 2, 1, dilation)
        assert (reached > 0).sum() == out.indices.shape[0]


def test_inverse_convolution_is_the_transposed_convolution():
    x = random_tensor(80, [8, 9, 10], 2, 4)
    down = sv.SparseConv3d(4, 6, 3, stride=2, padding=1, indice_key='down').double()
    up = sv.SparseInverseConv3d(6, 3, 3, indice_key='down').double()
    middle = down(x)
    out = up(middle)
    assert torch.equal(out.indices, x.indices) and out.spatial_shape == x.spatial_shape
    weight = up.weight.movedim(-1, 0)   # [in, out, *kernel] for conv_transpose
    dense = F.conv_transpose3d(middle.dense(), weight, up.bias, stride=2, padding=1, output_padding=1)
    torch.testing.assert_close(out.features, at_sites(dense, out), rtol=1e-12, atol=1e-12)


def test_gradients_float64():
    x = random_tensor(40, [5, 6, 7], 2, 3)
    network = sv.SparseSequential(sv.SubMConv3d(3, 4, 3), sv.SparseConv3d(4, 4, 3, 2, 1, groups=2, indice_key='d'),
                                  sv.SparseInverseConv3d(4, 2, 3, indice_key='d')).double()
    names = [name for name, _ in network.named_parameters()]

    def run(features, *parameters):
        out = torch.func.functional_call(network, dict(zip(names, parameters)), (x.replace_feature(features),))
        return out.features

    inputs = [x.features.clone().requires_grad_()] + [p.detach().clone().requires_grad_()
                                                       for p in network.parameters()]
    assert torch.autograd.gradcheck(run, tuple(inputs))


def _network(lib):
    return [lib.SubMConv3d(4, 16, 3, bias=False, indice_key='subm1'), lib.SparseConv3d(16, 16, 3, 2, 1, indice_key='down'),
            lib.SubMConv3d(16, 16, 3, indice_key='subm2'), lib.SparseInverseConv3d(16, 8, 3, indice_key='down'),
            lib.SparseConv3d(8, 8, 2, 2, 0, bias=False), lib.SparseReLU(), lib.SparseMaxPool3d(3, 2, 1)]


@pytest.mark.parametrize('mesh', ['bunny10k.obj', 'airplane.obj'])
@pytest.mark.parametrize('resolution', [48, 128])
def test_spconv_parity_on_real_meshes(mesh_sites, mesh, resolution, monkeypatch):
    """SubM, strided, inverse conv and max pool equal spconv 2.3.8 (run at 1 thread: it races on CPU above that)."""
    spconv = pytest.importorskip('spconv.pytorch')
    monkeypatch.setattr(spconv.ops, 'get_current_stream', lambda: 0)   # spconv's CPU backward asks for CUDA
    sites, shape = mesh_sites(mesh, resolution)
    torch.manual_seed(0)
    theirs = spconv.SparseSequential(*_network(spconv))
    ours = sv.SparseSequential(*_network(sv))
    ours.load_state_dict(theirs.state_dict())   # spconv state_dicts load unchanged
    features = torch.randn(sites.shape[0], 4)
    with threads(1):
        their_features, our_features = features.clone().requires_grad_(), features.clone().requires_grad_()
        their_out = theirs(spconv.SparseConvTensor(their_features, sites, shape, 1))
        our_out = ours(sv.SparseConvTensor(our_features, sites, shape, 1))
        assert our_out.spatial_shape == list(their_out.spatial_shape)
        torch.testing.assert_close(our_out.dense(), their_out.dense(), rtol=1e-4, atol=1e-4)
        upstream = torch.randn_like(our_out.dense())
        (their_out.dense() * upstream).sum().backward()
        (our_out.dense() * upstream).sum().backward()
    torch.testing.assert_close(our_features.grad, their_features.grad, rtol=1e-4, atol=1e-4)
    for (name, mine), (_, reference) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-3, atol=1e-3, msg=name)


def test_bitwise_deterministic_across_threads():
    x = random_tensor(3000, [20, 30, 30], 2, 16, dtype=torch.float32)
    torch.manual_seed(0)
    network = sv.SparseSequential(
        sv.SubMConv3d(16, 32, 3), sv.SparseConv3d(32, 32, 3, 2, 1, indice_key='d'), sv.SubMConv3d(32, 32, 3),
        sv.SparseInverseConv3d(32, 16, 3, indice_key='d'))
    results = []
    for count in (1, 2, 2):
        with threads(count):
            features = x.features.clone().requires_grad_()
            network.zero_grad()
            out = network(sv.SparseTensor(features, x.indices, x.spatial_shape, x.batch_size))
            out.features.square().sum().backward()
            results.append([out.features.detach(), features.grad] + [p.grad for p in network.parameters()])
    for result in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(result, results[0]))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_reduced_precision_close_to_float32(dtype):
    x = random_tensor(500, [10, 12, 14], 1, 16, dtype=torch.float32)
    layer = sv.SubMConv3d(16, 16, 3)
    expected = layer(x).features
    out = layer(x.replace_feature(x.features.to(dtype)))
    assert out.features.dtype == dtype
    torch.testing.assert_close(out.features.float(), expected, rtol=2e-2, atol=2e-2)


def test_empty_input_gives_empty_output():
    x = sv.SparseTensor(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.int32), [5, 5, 5], 2)
    out = sv.SparseConv3d(4, 6, 3, 2, 1)(sv.SubMConv3d(4, 4, 3)(x))
    assert out.features.shape == (0, 6) and out.dense().shape == (2, 6, 3, 3, 3)


def test_nan_features_propagate():
    x = random_tensor(100, [6, 6, 6], 1, 4, dtype=torch.float32)
    features = x.features.clone()
    features[0, 0] = float('nan')
    out = sv.SubMConv3d(4, 4, 3)(x.replace_feature(features))
    assert out.features.isnan().any() and not out.features.isnan().all()


@pytest.mark.parametrize('indices, message', [
    (torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]]), 'duplicate'),
    (torch.tensor([[0, -1, 1, 1], [0, 1, 1, 2]]), 'negative'),
    (torch.tensor([[0, 1, 1, 1], [0, 1, 9, 2]]), 'reaches 9'),
    (torch.tensor([[0.0, 1, 1, 1], [0, 1, 2, 2]]), 'must be integers'),
    (torch.tensor([[0, 1, 1, 1], [2, 1, 2, 2]]), 'batch_size is 2'),
])
def test_bad_coordinates(indices, message):
    with pytest.raises(ValueError, match=message):
        sv.SubMConv3d(2, 2, 3)(sv.SparseTensor(torch.zeros(2, 2), indices, [8, 8, 8], 2))


def test_bad_shapes_and_channels():
    indices = torch.tensor([[0, 1, 1, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match='rows'):
        sv.SparseTensor(torch.zeros(2, 3), indices, [4, 4, 4], 1)
    with pytest.raises(ValueError, match='expects 4 input channels'):
        sv.SubMConv3d(4, 4, 3)(sv.SparseTensor(torch.zeros(1, 3), indices, [4, 4, 4], 1))
    with pytest.raises(ValueError, match='divisible by groups'):
        sv.SubMConv3d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match='indice_key'):
        sv.SparseInverseConv3d(4, 4, 3, indice_key='never')(sv.SparseTensor(torch.zeros(1, 4), indices, [4, 4, 4], 1))


def test_dense_round_trip_and_global_pooling():
    x = random_tensor(50, [5, 6, 7], 3, 4, dtype=torch.float32)
    back = sv.SparseTensor.from_dense(x.dense(channels_first=False))
    order = lambda t: (t.indices[:, 0] * 1000 + t.indices[:, 1] * 100 + t.indices[:, 2] * 10 + t.indices[:, 3]).argsort()
    assert torch.equal(back.indices[order(back)], x.indices[order(x)])
    assert torch.equal(back.features[order(back)], x.features[order(x)])
    pooled = sv.SparseGlobalAvgPool()(x)
    for sample in range(3):
        torch.testing.assert_close(pooled[sample], x.features[x.indices[:, 0] == sample].mean(0))


def test_group_norm_is_per_sample():
    x = random_tensor(200, [6, 6, 6], 2, 8, dtype=torch.float64)
    norm = sv.SparseGroupNorm(2, 8).double()
    out = norm(x).features
    for sample in range(2):
        rows = x.indices[:, 0] == sample
        expected = F.group_norm(x.features[rows].T[None], 2).squeeze(0).T   # channels x sites as a 1-D "image"
        torch.testing.assert_close(out[rows], expected)


def test_kernel_maps_are_reused_without_indice_key():
    x = random_tensor(300, [8, 8, 8], 1, 4, dtype=torch.float32)
    first, second = sv.SubMConv3d(4, 4, 3), sv.SubMConv3d(4, 4, 3)
    y = first(x)
    assert len(x.kernel_maps) == 1 and y.kernel_maps is x.kernel_maps
    second(y)
    assert len(x.kernel_maps) == 1


def test_torch_compile_traces_the_ops():
    x = random_tensor(200, [8, 8, 8], 1, 4, dtype=torch.float32)
    layer = sv.SubMConv3d(4, 8, 3)
    kernel_map = sv.kernel_maps.convolution_map(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                                True)

    def step(features, weight):
        flat = weight.reshape(8, 27, 4).permute(1, 2, 0).contiguous()
        return torch.ops.sparsevision.sparse_conv(features, flat, kernel_map.neighbors, kernel_map.inverse, 1).relu()

    compiled = torch.compile(step, fullgraph=True, backend='aot_eager')
    features = x.features.clone().requires_grad_()
    out = compiled(features, layer.weight)
    out.sum().backward()
    eager_features = x.features.clone().requires_grad_()
    eager = step(eager_features, layer.weight)
    eager.sum().backward()
    assert torch.equal(out, eager) and torch.equal(features.grad, eager_features.grad)


def run_with_gradients(module, x):
    features = x.features.clone().requires_grad_()
    module.zero_grad()
    out = module(sv.SparseTensor(features, x.indices, x.spatial_shape, x.batch_size))
    out.features.square().sum().backward()
    return [out.features.detach(), features.grad] + [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize('block', ['sequential', 'basic_block', 'basic_block_identity'])
def test_norm_then_relu_is_fused_unless_hooked(block, monkeypatch):
    """A SparseBatchNorm followed by nn.ReLU (in a basic block: bn2, the residual add and the ReLU) runs as one fused
    op and gives, bitwise, what the modules give one after the other, which is what runs when a norm has a hook (the
    hook then sees the norm's own output)."""
    from sparsevision.models.layers import SparseBasicBlock
    channels = 16 if block == 'basic_block_identity' else 8
    x = random_tensor(2000, [16, 16, 16], 2, channels, dtype=torch.float32)
    torch.manual_seed(0)
    if block == 'sequential':
        module = sv.SparseSequential(sv.SubMConv3d(8, 16, 3), sv.SparseBatchNorm(16), torch.nn.ReLU())
        norms, relu = [module[1]], module[2]
    else:
        module = SparseBasicBlock(channels, 16)   # 8 -> 16: a projected shortcut; 16 -> 16: the identity
        norms, relu = [module.bn1, module.bn2], module.relu
    fused_calls = []
    forward_relu = sv.SparseBatchNorm.forward_relu
    monkeypatch.setattr(sv.SparseBatchNorm, 'forward_relu',
                        lambda self, x, residual=None: fused_calls.append(self) or forward_relu(self, x, residual))
    fused = run_with_gradients(module, x)
    assert fused_calls == norms
    seen = []
    hooks = [norm.register_forward_hook(lambda _, __, out: seen.append(out.features.min().item())) for norm in norms]
    try:
        unfused = run_with_gradients(module, x)
    finally:
        for hook in hooks:
            hook.remove()
    assert fused_calls == norms and len(seen) == len(norms) and all(value < 0 for value in seen)
    assert all(torch.equal(a, b) for a, b in zip(fused, unfused))
    module.eval()   # running statistics: the fused tail is torch ops, again the same bits as the hooked modules
    with torch.no_grad():
        fused = module(x).features
        hooks = [norm.register_forward_hook(lambda *_: None) for norm in norms]
        unfused = module(x).features
        for hook in hooks:
            hook.remove()
    assert torch.equal(fused, unfused) and len(fused_calls) == 2 * len(norms)
    assert sv.modules.can_fuse_relu(norms[0], relu) and not sv.modules.can_fuse_relu(norms[0], torch.nn.GELU())
