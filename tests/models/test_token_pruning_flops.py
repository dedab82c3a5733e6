"""Analytic MACs of dense and token-pruning ViTs: a tiny ViT by hand, and the published ViT-S/16 figures."""
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from sparsevision.models.token_pruning import from_timm
from sparsevision.models.token_pruning.flops import vit_macs

# 32x32 RGB, 8x8 patches: 16 patches + CLS = 17 tokens, C=32, 2 heads of 16, MLP hidden 128, 10 classes
TINY = dict(img_size=32, patch_size=8, num_classes=10, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0)
PATCHES, WIDTH, HEAD_DIM, HIDDEN, CLASSES = 16, 32, 16, 128, 10
PATCH_EMBED = PATCHES * WIDTH * 3 * 8 * 8
HEAD = WIDTH * CLASSES


def block_macs(tokens, mlp_tokens=None):
    """qkv 3NC^2 + attention 2N^2C + projection NC^2 + MLP 2N'CH, written out."""
    mlp_tokens = tokens if mlp_tokens is None else mlp_tokens
    return (3 * tokens * WIDTH ** 2 + 2 * tokens ** 2 * WIDTH + tokens * WIDTH ** 2
            + 2 * mlp_tokens * WIDTH * HIDDEN)


@pytest.fixture(scope='module')
def tiny_vit():
    torch.manual_seed(0)
    return VisionTransformer(**TINY).eval()


def test_dense_tiny_vit_matches_the_hand_count(tiny_vit):
    macs = vit_macs(tiny_vit)
    assert [entry['tokens'] for entry in macs['per_block']] == [17, 17]
    assert macs['per_block'][0]['qkv'] == 3 * 17 * 32 * 32
    assert macs['per_block'][0]['attention'] == 2 * 17 * 17 * 32
    assert macs['patch_embed'] == PATCH_EMBED and macs['head'] == HEAD
    assert macs['total'] == PATCH_EMBED + 2 * block_macs(17) + HEAD


@pytest.mark.parametrize('method, arguments, expected_blocks', [
    # EViT at block 0: keep ceil(0.5*16)=8 patches + CLS + fused token = 10; CLS row 17*C
    ('evit', dict(keep_rate=0.5, locations=(0,)), [block_macs(17, 10) + 17 * WIDTH, block_macs(10)]),
    # ToMe r=4: 16 patches split 8|8 (similarity 8*8*head_dim), 17 -> 13; then 12 split 6|6, 13 -> 9
    ('tome', dict(r=4), [block_macs(17, 13) + 8 * 8 * HEAD_DIM, block_macs(13, 9) + 6 * 6 * HEAD_DIM]),
    # DynamicViT before block 1: predictor on 16 patches (C*C + C*C/2 + C/2*C/4 + C/4*2), then 1 + 8 tokens
    ('dynamicvit', dict(keep_rate=0.5, locations=(1,)),
     [block_macs(17), block_macs(9) + 16 * (32 * 32 + 32 * 16 + 16 * 8 + 8 * 2)]),
    # SpAtten at block 0: 17 -> 1 + 8, nothing extra
    ('spatten', dict(keep_rate=0.5, locations=(0,)), [block_macs(17, 9), block_macs(9)]),
])
def test_pruned_tiny_vit_matches_the_hand_count(tiny_vit, method, arguments, expected_blocks):
    pruned = from_timm(tiny_vit, method, **arguments)
    macs = vit_macs(pruned)
    assert [entry['total'] for entry in macs['per_block']] == expected_blocks
    assert macs['total'] == PATCH_EMBED + sum(expected_blocks) + HEAD


@pytest.mark.parametrize('method, arguments', [
    ('evit', dict(keep_rate=0.7, locations=(0, 1))), ('evit', dict(keep_mass=0.8, locations=(0, 1))),
    ('tome', dict(r=3)), ('dynamicvit', dict(keep_rate=0.7, locations=(0, 1))),
    ('spatten', dict(keep_rate=0.7, locations=(0, 1)))])
def test_counted_tokens_are_the_routing_state_counts(tiny_vit, method, arguments):
    pruned = from_timm(tiny_vit, method, **arguments)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, state = pruned.eval().forward_with_state(images)
    macs = vit_macs(pruned, batch_images=images)
    assert [entry['tokens'] for entry in macs['per_block']] == state.tokens_per_block


def test_training_mode_is_restored_and_inference_counted(tiny_vit):
    pruned = from_timm(tiny_vit, 'dynamicvit', keep_rate=0.5, locations=(1,)).train()
    macs = vit_macs(pruned)
    assert pruned.training and [entry['tokens'] for entry in macs['per_block']] == [17, 9]


def test_vit_small_matches_the_published_figures():
    """Dense DeiT-S/ViT-S/16: 4.6 GMACs; EViT keep 0.7 at blocks 3, 6, 9: 3.0 GMACs (EViT paper, Table 1)."""
    dense = timm.create_model('vit_small_patch16_224', pretrained=False).eval()
    dense_total = vit_macs(dense)['total']
    evit = vit_macs(from_timm(dense, 'evit', keep_rate=0.7, locations=(3, 6, 9)))
    assert dense_total == pytest.approx(4.6e9, rel=0.01)
    assert evit['total'] == pytest.approx(3.0e9, rel=0.02)
    assert [entry['tokens'] for entry in evit['per_block']] == [197] * 4 + [140] * 3 + [100] * 3 + [72] * 2
