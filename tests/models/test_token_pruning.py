"""Token-pruning ViTs: exactness against timm, each method's selection, variable counts, training, bad input."""
import math

import pytest
import timm
import torch
from timm.layers import Attention

from sparsevision.models.token_pruning import (DynamicViTRouter, EViTRouter, SpAttenRouter, ToMeRouter,
                                               TokenPruningViT, bipartite_merge_slots, from_timm)
from sklearn.datasets import load_digits

from sparsevision.model_zoo import pretrained_weights
from sparsevision.models.token_pruning.attention import attend
from sparsevision.models.token_pruning.flops import vit_macs
from sparsevision.registry import MODELS
from sparsevision.utils.checkpoint import load_state_dict

NAMED_MODELS = {   # the timm families the issue names: plain ViT, distilled DeiT, LayerScale, registers (+ qk-norm)
    'vit_small': ('vit_small_patch16_224', {}),
    'deit_distilled': ('deit_tiny_distilled_patch16_224', {}),
    'layerscale': ('deit3_small_patch16_224', {}),
    'registers_qknorm': ('vit_tiny_patch16_224', dict(reg_tokens=4, qk_norm=True)),
}
METHODS_OFF = [('evit', dict(keep_rate=1.0)), ('dynamicvit', dict(keep_rate=1.0)), ('tome', dict(r=0)),
               ('spatten', dict(keep_rate=1.0))]
TINY = dict(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
DIGITS_VIT = dict(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, depth=6, num_heads=4,
                  mlp_ratio=2.0)
TINY_METHODS = {
    'evit': dict(type='EViTRouter', keep_rate=0.7, locations=(1, 2)),
    'evit_mass': dict(type='EViTRouter', keep_mass=0.8, locations=(1, 2)),
    'dynamicvit': dict(type='DynamicViTRouter', keep_rate=0.7, locations=(1, 2)),
    'tome': dict(type='ToMeRouter', r=8),
    'spatten': dict(type='SpAttenRouter', keep_rate=0.7, locations=(1, 2)),
}


@pytest.fixture(scope='module')
def named_models():
    torch.manual_seed(0)
    return {key: timm.create_model(name, pretrained=False, **kwargs).eval()
            for key, (name, kwargs) in NAMED_MODELS.items()}


@pytest.mark.parametrize('key', list(NAMED_MODELS))
def test_pruning_off_equals_timm(named_models, key):
    dense = named_models[key]
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dense(images)
        for method, arguments in METHODS_OFF:
            assert torch.equal(from_timm(dense, method, **arguments).eval()(images), expected), method
        pruned = from_timm(dense, 'evit', keep_rate=0.7)(images)   # and a pruned copy leaves the original alone
        assert pruned.shape == expected.shape and torch.equal(dense(images), expected)


@pytest.mark.parametrize('fused', [True, False])
def test_attend_equals_timm_attention(fused):
    torch.manual_seed(0)
    attention = Attention(48, num_heads=4, qkv_bias=True, qk_norm=True, scale_norm=True,
                          norm_layer=torch.nn.LayerNorm).eval()
    attention.fused_attn = fused
    x = torch.randn(3, 17, 48)
    with torch.no_grad():
        expected = attention(x)
        plain = attend(attention, x)
        extras = attend(attention, x, cls_attention=True, keys=True, received=True)
    assert torch.equal(plain.output, expected)
    torch.testing.assert_close(extras.output, expected, rtol=1e-5, atol=1e-6)
    # the extras against an explicit softmax
    q, k, _ = attention.qkv(x).reshape(3, 17, 3, 4, 12).permute(2, 0, 3, 1, 4)
    probabilities = ((attention.q_norm(q) * attention.scale) @ attention.k_norm(k).transpose(-2, -1)).softmax(-1)
    torch.testing.assert_close(extras.cls_attention, probabilities[:, :, 0].mean(1))
    torch.testing.assert_close(extras.received, probabilities.sum((1, 2)))
    torch.testing.assert_close(extras.keys, attention.k_norm(k).mean(1))


def tiny_model(method: str, **overrides) -> TokenPruningViT:
    torch.manual_seed(0)
    return MODELS.build(dict(type='TokenPruningViT', method=dict(TINY_METHODS[method], **overrides), **TINY))


def test_evit_keeps_the_top_cls_attention_tokens_and_fuses_the_rest():
    model = tiny_model('evit').eval()
    images = torch.randn(2, 1, 32, 32)
    captured = {}
    original_reduce = EViTRouter.reduce

    def spy(router, x, attention, state, index):
        reduced = original_reduce(router, x, attention, state, index)
        if index == 1:
            captured.update(x=x.clone(), scores=attention.cls_attention[:, 1:].clone(), reduced=reduced.clone())
        return reduced

    EViTRouter.reduce = spy
    try:
        _, state = model.forward_with_state(images)
    finally:
        EViTRouter.reduce = original_reduce
    kept = math.ceil(0.7 * 64)
    assert state.tokens_per_block == [65, 65, 1 + kept + 1, 1 + math.ceil(0.7 * (kept + 1)) + 1]
    scores, x, reduced = captured['scores'], captured['x'], captured['reduced']
    for b in range(2):
        top = sorted(scores[b].topk(kept).indices.tolist())
        assert (state.history[0][b] >= 0).nonzero().flatten().tolist() == top
        assert torch.equal(reduced[b, 1:1 + kept], x[b, 1:][top])   # kept tokens, in spatial order
        dropped = sorted(set(range(64)) - set(top))
        weights = scores[b, dropped] / scores[b, dropped].sum()
        torch.testing.assert_close(reduced[b, -1], (weights[:, None] * x[b, 1:][dropped]).sum(0))


def test_tome_slots_match_a_direct_computation():
    generator = torch.Generator().manual_seed(3)
    keys, prefix, merged = torch.randn(2, 1 + 11, 8, generator=generator), 1, 4
    slots, count = bipartite_merge_slots(keys, prefix, merged)
    assert count == 12 - merged
    for b in range(2):
        metric = torch.nn.functional.normalize(keys[b, prefix:], dim=-1)
        a_rows, b_rows = list(range(0, 11, 2)), list(range(1, 11, 2))
        similarity = metric[a_rows] @ metric[b_rows].T
        best, partner = similarity.max(1)
        sources = set(best.argsort(descending=True, stable=True)[:merged].tolist())
        assert slots[b, 0] == 0
        kept_a = [i for i in range(len(a_rows)) if i not in sources]
        for i, row in enumerate(a_rows):
            if i in sources:
                assert slots[b, prefix + row] == slots[b, prefix + b_rows[partner[i]]]
            else:
                assert slots[b, prefix + row] == prefix + kept_a.index(i)
        assert sorted(set(slots[b].tolist())) == list(range(count))


def test_tome_merges_into_size_weighted_means_with_sizes_tracked():
    model = tiny_model('tome').eval()
    _, state = model.forward_with_state(torch.randn(2, 1, 32, 32))
    assert state.tokens_per_block == [65, 57, 49, 41]
    assert torch.equal(state.sizes.sum(1), torch.full((2,), 65.0))   # every patch (and the CLS) counted once
    carried = torch.zeros_like(state.sizes)
    carried.scatter_add_(1, state.source, torch.ones_like(state.source, dtype=carried.dtype))
    assert torch.equal(carried[:, 1:], state.sizes[:, 1:])


def test_spatten_prunes_by_cumulative_importance():
    model = tiny_model('spatten').eval()
    _, state = model.forward_with_state(torch.randn(2, 1, 32, 32))
    kept = math.ceil(0.7 * 64)
    assert state.tokens_per_block == [65, 65, 1 + kept, 1 + math.ceil(0.7 * kept)]
    assert state.importance.shape == (2, 1 + math.ceil(0.7 * kept))


@pytest.mark.parametrize('fused', [True, False])
def test_attend_on_a_subset_of_heads_equals_zeroing_the_others(fused):
    torch.manual_seed(0)
    attention = Attention(48, num_heads=4, qkv_bias=True, qk_norm=True, norm_layer=torch.nn.LayerNorm).eval()
    attention.fused_attn = fused
    x = torch.randn(3, 17, 48)
    heads = torch.tensor([[0, 2], [1, 3], [3, 0]])
    with torch.no_grad():
        every = attend(attention, x, heads=torch.arange(4).expand(3, -1), head_importance=True)
        assert torch.equal(every.output, attend(attention, x).output)
        subset = attend(attention, x, heads=heads, head_importance=True, received=not fused)
        # reference: all heads computed, the skipped ones zeroed before the output projection
        q, k, v = attention.qkv(x).reshape(3, 17, 3, 4, 12).permute(2, 0, 3, 1, 4)
        y = ((attention.q_norm(q) * attention.scale) @ attention.k_norm(k).transpose(-2, -1)).softmax(-1) @ v
        mask = torch.zeros(3, 4).scatter(1, heads, 1.0)[:, :, None, None]
        expected = attention.proj((y * mask).transpose(1, 2).reshape(3, 17, 48))
    torch.testing.assert_close(subset.output, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(subset.head_importance, (y * mask).abs().sum((2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(every.head_importance, y.abs().sum((2, 3)), rtol=1e-5, atol=1e-5)


def test_spatten_cascade_head_pruning():
    model = tiny_model('spatten', head_keep_rate=0.5, head_locations=(0, 1)).eval()
    images = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        batched, state = model.forward_with_state(images)
        alone = torch.cat([model(image[None]) for image in images])
    assert state.heads_per_block == [4, 2, 1, 1]   # ceil(0.5 * 4), then ceil(0.5 * 2), for good
    assert state.heads.shape == (3, 1)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)   # each image picks its own heads
    model.train()
    model(images).sum().backward()
    assert model.blocks[3].attn.qkv.weight.grad is not None
    unpruned = tiny_model('spatten', head_keep_rate=1.0).eval()
    with torch.no_grad():
        assert torch.equal(unpruned(images), tiny_model('spatten').eval()(images))
    full_macs, pruned_macs = vit_macs(unpruned), vit_macs(tiny_model('spatten', head_keep_rate=0.5,
                                                                     head_locations=(0, 1)))
    assert pruned_macs['per_block'][3]['attention'] * 4 == full_macs['per_block'][3]['attention']
    with pytest.raises(ValueError, match='head_keep_rate|keep_rate'):
        tiny_model('spatten', head_keep_rate=0.0)
    with pytest.raises(ValueError, match='head_locations'):
        tiny_model('spatten', head_keep_rate=0.5, head_locations=(7,))


def test_variable_counts_per_image_equal_running_each_image_alone():
    """The trained digits ViT on real digits: images keep different counts, padded and masked in a batch."""
    weights = load_state_dict(pretrained_weights('vit_tiny_p4_digits'))
    model = MODELS.build(dict(type='TokenPruningViT', method=dict(type='EViTRouter', keep_mass=0.6, locations=(1, 3)),
                              **DIGITS_VIT)).eval()
    model.load_dense_weights({key.removeprefix('backbone.'): value for key, value in weights.items()})
    digits = load_digits()
    images = torch.nn.functional.interpolate(torch.tensor(digits.images[:6], dtype=torch.float32)[:, None] / 16,
                                             size=32, mode='bilinear')
    images = (images - 0.3) / 0.4
    with torch.no_grad():
        batched, state = model.forward_with_state(images)
        alone = torch.cat([model(image[None]) for image in images])
    counts = (state.source >= 0).sum(1)
    assert state.valid is not None and len(set(counts.tolist())) > 1, 'the images should keep different counts'
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_dynamicvit_trains_with_masks_and_prunes_at_inference():
    model = tiny_model('dynamicvit')
    images = torch.randn(4, 1, 32, 32)
    model.train()
    logits, state = model.forward_with_state(images)
    assert state.tokens_per_block == [65] * 4 and state.keep is not None
    losses = model.router.losses(state)
    (logits.logsumexp(1).mean() + losses['loss_keep_ratio']).backward()
    assert all(p.grad is not None for p in model.router.predictors.parameters())
    model.eval()
    _, state = model.forward_with_state(images)
    assert state.tokens_per_block == [65, 1 + 44, 1 + 31, 1 + 31]   # floor(0.7 ** s * 64), as in the paper


def test_dynamicvit_untrained_predictors_keep_the_target_rate():
    """The fixed logit offset survives weight initialisation, so training starts at the paper's token counts."""
    torch.manual_seed(0)
    model = tiny_model('dynamicvit')
    for predictor in model.router.predictors:
        for layer in predictor.modules():
            if isinstance(layer, torch.nn.Linear):   # what a zero-init of the predictor head would leave
                torch.nn.init.zeros_(layer.bias)
                torch.nn.init.zeros_(layer.weight)
    model.train()
    _, state = model.forward_with_state(torch.randn(64, 1, 32, 32))
    for stage, ratio in enumerate(state.keep_ratios):
        assert abs(ratio.mean().item() - 0.7 ** (stage + 1)) < 0.03, (stage, ratio.mean().item())


@pytest.mark.parametrize('method', list(TINY_METHODS))
def test_every_method_forward_backward_and_deterministic(method):
    model = tiny_model(method).train()
    images = torch.randn(2, 1, 32, 32)
    torch.manual_seed(7)
    model(images).sum().backward()
    model.eval()
    with torch.no_grad():
        first = model(images)
        previous = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            single = model(images)
        finally:
            torch.set_num_threads(previous)
    assert torch.equal(first, single) and torch.isfinite(first).all()


@pytest.mark.parametrize('method', ['evit', 'tome'])
def test_feature_map_recovers_every_patch(method):
    model = tiny_model(method, **({} if method == 'tome' else {}))
    model.out_type = 'featmap'
    model.eval()
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        feature_map, state = model.forward_with_state(images)
    assert feature_map.shape == (2, 64, 8, 8)
    dense = MODELS.build(dict(type='TokenPruningViT', method=dict(type='EViTRouter', keep_rate=1.0, locations=(1,)),
                              out_type='featmap', **TINY))
    dense.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        tokens = dense.forward_tokens(images)[0]
        assert torch.equal(dense.eval()(images), tokens[:, 1:].transpose(1, 2).reshape(2, 64, 8, 8))
    if method == 'tome':   # merged patches share their token's features
        final = state.source
        for b in range(2):
            same = (final[b] == final[b, 0]).nonzero().flatten()
            grid = feature_map[b].flatten(1)
            assert torch.equal(grid[:, same], grid[:, same[:1]].expand(-1, len(same)))


def test_bad_input_raises_clear_errors():
    model = tiny_model('evit')
    with pytest.raises(ValueError, match=r'expects \[B, C, 32, 32\]'):
        model(torch.randn(1, 1, 30, 30))
    for rate in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match='keep_rate must lie in'):
            tiny_model('evit', keep_rate=rate)
    with pytest.raises(ValueError, match='more than half'):
        tiny_model('tome', r=40)
    with pytest.raises(ValueError, match='locations'):
        tiny_model('spatten', locations=(9,))
    with pytest.raises(ValueError, match='Supported: timm VisionTransformer'):
        from_timm(timm.create_model('resnet18', pretrained=False), 'evit')
    with pytest.raises(ValueError, match='Supported'):
        from_timm(timm.create_model('vit_small_patch16_18x2_224', pretrained=False), 'tome')   # parallel blocks
    with pytest.raises(ValueError, match='another architecture'):
        model.load_dense_weights(timm.create_model('vit_tiny_patch16_224', pretrained=False).state_dict())


@pytest.mark.parametrize('r', [-3, 2.5, True, 'eight', [2, -1], (1, 2.5)])
def test_tome_refuses_merge_counts_that_are_not_integers_from_zero(r):
    with pytest.raises(ValueError, match=r'ToMeRouter: r \(tokens merged per block\) must be an integer >= 0'):
        ToMeRouter(r=r)   # at construction, before any model is bound


def test_tome_r_zero_merges_nothing_and_integer_schedules_are_kept():
    assert ToMeRouter(r=0).r == 0 and not tiny_model('tome', r=0).router.reduces
    assert ToMeRouter(r=[2, 0, 1, 0]).r == (2, 0, 1, 0)


@pytest.mark.parametrize('router, arguments, name', [
    (EViTRouter, dict(keep_rate=True), 'keep_rate'),
    (EViTRouter, dict(keep_rate='0.7'), 'keep_rate'),
    (EViTRouter, dict(keep_mass=0.0), 'keep_mass'),
    (EViTRouter, dict(keep_mass=True), 'keep_mass'),
    (DynamicViTRouter, dict(keep_rate=0.0), 'keep_rate'),
    (DynamicViTRouter, dict(keep_rate=float('nan')), 'keep_rate'),
    (SpAttenRouter, dict(keep_rate=1.5), 'keep_rate'),
    (SpAttenRouter, dict(head_keep_rate=0.0), 'head_keep_rate'),
    (SpAttenRouter, dict(head_keep_rate=-0.5), 'head_keep_rate'),
])
def test_keep_rates_outside_zero_one_are_refused_by_name(router, arguments, name):
    with pytest.raises(ValueError, match=rf'^{name} must lie in \(0, 1\]'):
        router(**arguments)


@pytest.mark.parametrize('router, arguments, name', [
    (EViTRouter, dict(locations=(3.5, 6)), 'locations'),
    (DynamicViTRouter, dict(locations=3), 'locations'),
    (SpAttenRouter, dict(head_locations=(True,)), 'head_locations'),
])
def test_block_locations_must_be_integers(router, arguments, name):
    with pytest.raises(ValueError, match=f'^{name} must'):
        router(**arguments)


def test_from_timm_loads_pretrained_weights_from_a_local_file(tmp_path):
    torch.manual_seed(3)
    weights = timm.create_model('test_vit').state_dict()
    path = tmp_path / 'test_vit.pth'
    torch.save(weights, path)
    model = from_timm('test_vit', 'evit', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                      keep_rate=0.7, locations=(1,))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in weights.items())
    again = from_timm('test_vit', 'tome', checkpoint_path=str(path), r=2)
    assert torch.equal(again.pos_embed, weights['pos_embed'])
    with pytest.raises(ValueError, match='pretrained, pretrained_cfg_overlay apply to timm model names'):
        from_timm(timm.create_model('test_vit'), 'evit', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_dense_weights_load_with_only_router_parameters_missing():
    dense = MODELS.build(dict(type='VisionTransformer', **TINY))
    model = tiny_model('dynamicvit')
    model.load_dense_weights(dense.state_dict())
    assert torch.equal(model.pos_embed, dense.pos_embed)


def test_router_types_are_registered():
    for router in (EViTRouter, DynamicViTRouter, ToMeRouter, SpAttenRouter):
        assert MODELS.get(router.__name__) is router
