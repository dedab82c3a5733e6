"""NAT and DiNAT (an arch of NAT): the official checkpoints' layout, and outputs equal to the same network with
neighbourhood attention computed by its definition (dense attention masked to each query's window, bias per key)."""
import itertools

import pytest
import torch

from sparsevision.models.backbones import NAT
from sparsevision.models.backbones.nat import ARCHITECTURES
from sparsevision.models.layers import neighborhood_attention as na_module
from sparsevision.registry import MODELS


def official_layout(embed_dim, depths, heads, mlp_ratio, layer_scale, num_classes=1000, kernel=7):
    """Key -> shape of the official classification checkpoints (classification/nat.py of the NAT repository)."""
    layout = {'patch_embed.proj.0.weight': (embed_dim // 2, 3, 3, 3), 'patch_embed.proj.0.bias': (embed_dim // 2,),
              'patch_embed.proj.1.weight': (embed_dim, embed_dim // 2, 3, 3), 'patch_embed.proj.1.bias': (embed_dim,),
              'patch_embed.norm.weight': (embed_dim,), 'patch_embed.norm.bias': (embed_dim,)}
    for level, depth in enumerate(depths):
        dim = embed_dim * 2 ** level
        for block in range(depth):
            prefix = f'levels.{level}.blocks.{block}.'
            layout.update({prefix + 'norm1.weight': (dim,), prefix + 'norm1.bias': (dim,),
                           prefix + 'attn.rpb': (heads[level], 2 * kernel - 1, 2 * kernel - 1),
                           prefix + 'attn.qkv.weight': (3 * dim, dim), prefix + 'attn.qkv.bias': (3 * dim,),
                           prefix + 'attn.proj.weight': (dim, dim), prefix + 'attn.proj.bias': (dim,),
                           prefix + 'norm2.weight': (dim,), prefix + 'norm2.bias': (dim,),
                           prefix + 'mlp.fc1.weight': (int(dim * mlp_ratio), dim),
                           prefix + 'mlp.fc1.bias': (int(dim * mlp_ratio),),
                           prefix + 'mlp.fc2.weight': (dim, int(dim * mlp_ratio)), prefix + 'mlp.fc2.bias': (dim,)})
            if layer_scale:
                layout.update({prefix + 'gamma1': (dim,), prefix + 'gamma2': (dim,)})
        if level < len(depths) - 1:
            layout.update({f'levels.{level}.downsample.reduction.weight': (2 * dim, dim, 3, 3),
                           f'levels.{level}.downsample.norm.weight': (2 * dim,),
                           f'levels.{level}.downsample.norm.bias': (2 * dim,)})
    features = embed_dim * 2 ** (len(depths) - 1)
    layout.update({'norm.weight': (features,), 'norm.bias': (features,), 'head.weight': (num_classes, features),
                   'head.bias': (num_classes,)})
    return layout


@pytest.mark.parametrize('arch', sorted(ARCHITECTURES))
def test_a_checkpoint_in_the_official_layout_loads_strictly(arch):
    embed_dim, depths, heads, mlp_ratio, _, layer_scale, _ = ARCHITECTURES[arch]
    layout = official_layout(embed_dim, depths, heads, mlp_ratio, layer_scale)
    model = MODELS.build(dict(type='NAT', arch=arch))
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == layout
    generator = torch.Generator().manual_seed(0)
    checkpoint = {key: torch.randn(shape, generator=generator) for key, shape in layout.items()}
    model.load_state_dict(checkpoint, strict=True)
    assert torch.equal(model.levels[2].blocks[1].attn.rpb, checkpoint['levels.2.blocks.1.attn.rpb'])


def test_parameter_counts_match_the_papers():
    counts = {arch: sum(p.numel() for p in NAT(arch).parameters()) / 1e6 for arch in ('nat_mini', 'nat_tiny')}
    assert round(counts['nat_mini']) == 20 and round(counts['nat_tiny']) == 28   # the NAT paper's table


def definition_attention(query, key, value, kernel_size, dilation, is_causal, rpb, scale, dims):
    """2-D NA by its definition: dense attention over the grid, masked to each query's window (the dilation group's
    nearest ``kernel`` keys per axis, shifted inward at the borders), plus ``rpb[key - query + k - 1]``."""
    batch, height, width, heads, _ = query.shape
    bias = torch.full((heads, height * width, height * width), float('-inf'), dtype=query.dtype)
    for y, x in itertools.product(range(height), range(width)):
        axes = [_window(y, height, kernel_size[0], dilation[0]), _window(x, width, kernel_size[1], dilation[1])]
        for (ky, oy), (kx, ox) in itertools.product(*axes):
            bias[:, y * width + x, ky * width + kx] = rpb[:, oy, ox]
    flat = [t.reshape(batch, height * width, heads, -1).transpose(1, 2) for t in (query, key, value)]
    weights = ((flat[0] @ flat[1].transpose(-2, -1)) * scale + bias).softmax(-1)
    return (weights @ flat[2]).transpose(1, 2).reshape(*query.shape[:-1], value.shape[-1])


def _window(position, length, kernel, dilation):
    group = list(range(position % dilation, length, dilation))
    step = group.index(position)
    start = min(max(step - kernel // 2, 0), len(group) - kernel)
    return [(group[member], member - step + kernel - 1) for member in range(start, start + kernel)]


@pytest.mark.parametrize('arch', ['nat_mini', 'dinat_mini'])
def test_outputs_equal_the_network_with_attention_by_definition(arch, monkeypatch):
    torch.manual_seed(0)
    model = MODELS.build(dict(type='NAT', arch=arch, num_classes=10)).double().eval()
    for parameter in model.parameters():   # random biases and norms too, so nothing hides behind an identity
        parameter.data.normal_(0, 0.1 if parameter.dim() > 1 else 0.5)
    images = torch.randn(1, 3, 64, 96, dtype=torch.float64)   # level grids 16x24 ... 2x3 (padded to the window)
    with torch.no_grad():
        ours = model(images)
        monkeypatch.setattr(na_module, 'neighborhood_attention', definition_attention)
        by_definition = model(images)
    torch.testing.assert_close(ours, by_definition, rtol=1e-9, atol=1e-9)


def test_dense_outputs_and_bad_arguments():
    levels = NAT('nat_mini', out_indices=(0, 3)).eval()(torch.randn(2, 3, 64, 64))
    assert [tuple(t.shape) for t in levels] == [(2, 64, 16, 16), (2, 512, 2, 2)]
    with pytest.raises(ValueError, match='unknown NAT arch'):
        NAT('nat_huge')
    with pytest.raises(ValueError, match='exactly the fields'):
        NAT(dict(embed_dim=32, depths=(2, 2)))
    with pytest.raises(ValueError, match='out_indices'):
        NAT('nat_mini', out_indices=(4,))
