"""Sparse masked pretraining: the sparse and dense-masked encoders agree, GRN is per sample, bad input is refused."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsevision.models.backbones import ResNet, TimmBackbone
from sparsevision.models.classifiers import ImageClassifier
from sparsevision.models.masked_pretraining import (MaskPyramid, SparK, check_maskable, encode_masked,
                                                    masked_patch_loss, patchify, random_patch_mask, unpatchify)
from sparsevision.registry import MODELS


def _backbones():
    return {
        'resnet18_small': lambda: ResNet(depth=18, in_channels=3, base_channels=8, small_input=True,
                                         out_indices=(0, 1, 2, 3)),
        'resnet50_stem': lambda: ResNet(depth=50, in_channels=3, base_channels=4, out_indices=(0, 1, 2, 3)),
        'timm_resnet18': lambda: TimmBackbone('resnet18', out_indices=(1, 2, 3, 4)),
        'timm_convnextv2': lambda: TimmBackbone('convnextv2_atto', drop_path_rate=0.0),
        'timm_convnext': lambda: TimmBackbone('convnext_atto'),
        'timm_seresnet18': lambda: TimmBackbone('seresnet18'),             # per-sample squeeze-excitation gates
        'timm_resnet18d': lambda: TimmBackbone('resnet18d'),               # average-pooled shortcut (ceil_mode)
        'timm_mobilenetv3': lambda: TimmBackbone('mobilenetv3_small_050'),  # depthwise, hard-sigmoid gates
        'timm_mobilenetv2': lambda: TimmBackbone('mobilenetv2_050'),          # fused BatchNormAct2d, ReLU6
        'timm_efficientnet': lambda: TimmBackbone('tinynet_e'),               # EfficientNet: BatchNormAct2d, SiLU, SE
    }


def _perturbed(backbone: nn.Module) -> nn.Module:
    """float64, with every parameter moved off its initial value (GRN's start at zero, where it does nothing)."""
    backbone = backbone.double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in backbone.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return backbone


def _outputs_and_gradients(backbone, images, visible, sparse):
    """Outputs and parameter gradients of a fixed weighted sum; ``sparse=None``: the plain dense backbone."""
    backbone.zero_grad()
    if sparse is None:
        dense = list(backbone(images))
    else:
        dense = [feature_map.to_dense() for feature_map in encode_masked(backbone, images, visible, sparse=sparse)]
    weights = [torch.linspace(-1, 1, d.numel(), dtype=d.dtype).reshape(d.shape) for d in dense]
    sum((d * w).sum() for d, w in zip(dense, weights)).backward()
    return [d.detach() for d in dense], [p.grad for p in backbone.parameters() if p.grad is not None]


def _masks(batch, grid):
    generator = torch.Generator().manual_seed(0)
    one_visible = torch.zeros(batch, *grid, dtype=torch.bool)
    one_visible[:, 0, -1] = True
    return {'random': random_patch_mask(batch, grid, 0.5, generator=generator),
            'all_visible': torch.ones(batch, *grid, dtype=torch.bool),
            'one_patch_each': one_visible}


@pytest.mark.parametrize('name', list(_backbones()))
@pytest.mark.parametrize('mask_kind', ['random', 'all_visible', 'one_patch_each'])
def test_sparse_and_dense_masked_paths_agree(name, mask_kind):
    torch.manual_seed(0)
    backbone = _perturbed(_backbones()[name]())
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    visible = _masks(3, (2, 2))[mask_kind]
    sparse_out, sparse_grad = _outputs_and_gradients(backbone, images, visible, True)
    dense_out, dense_grad = _outputs_and_gradients(backbone, images, visible, False)
    for a, b in zip(sparse_out, dense_out):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # Absolute tolerance on purpose: gradients that are zero in exact arithmetic (MobileNetV2/EfficientNet bn3
    # biases feeding only training-mode batch norms, which remove any constant shift) are ~1e-14 rounding noise
    # in both paths, so their relative difference is meaningless.
    for a, b in zip(sparse_grad, dense_grad):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)   # few-site batch norm amplifies rounding


@pytest.mark.parametrize('name', ['resnet50_stem', 'timm_convnextv2', 'timm_mobilenetv2', 'timm_efficientnet'])
def test_all_visible_sparse_encoder_equals_the_dense_backbone(name):
    backbone = _perturbed(_backbones()[name]())
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    all_visible = torch.ones(2, 2, 2, dtype=torch.bool)
    expected, expected_grad = _outputs_and_gradients(backbone, images, all_visible, None)
    outputs, gradients = _outputs_and_gradients(backbone, images, all_visible, True)
    for a, b in zip(outputs, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for a, b in zip(gradients, expected_grad):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('act', ['silu', 'relu6', None])
@pytest.mark.parametrize('training', [True, False])
def test_fused_batch_norm_act_uses_visible_site_statistics(act, training):
    """timm's BatchNormAct2d (MobileNetV2, EfficientNet) against SparK's masked batch norm written out by hand."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    norm = BatchNormAct2d(5, act_layer=act, apply_act=act is not None).double().train(training)
    with torch.no_grad():
        for tensor in (norm.weight, norm.bias, norm.running_mean):
            tensor.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    patches = torch.tensor([[[True, False], [False, True]], [[True, True], [False, False]]])
    images = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    loss_weights = torch.randn(2, 4, 4, 5, dtype=torch.float64)
    visible = MaskPyramid(patches).mask(4, 4)
    rows = images.permute(0, 2, 3, 1)[visible]                   # statistics over the visible sites only
    mean, var = (rows.mean(0), rows.var(0, unbiased=False)) if training else (norm.running_mean, norm.running_var)
    weight = norm.weight.detach().clone().requires_grad_()
    bias = norm.bias.detach().clone().requires_grad_()
    expected = (rows - mean) / (var + norm.eps).sqrt() * weight + bias
    expected = {'silu': F.silu, 'relu6': F.relu6, None: lambda t: t}[act](expected)
    (expected * loss_weights[visible]).sum().backward()
    running = (norm.running_mean.clone(), norm.running_var.clone())
    for sparse in (True, False):
        norm.zero_grad()
        output = encode_masked(norm, images, patches, sparse)[0].to_dense().permute(0, 2, 3, 1)
        (output * loss_weights).sum().backward()
        torch.testing.assert_close(output[visible], expected.detach(), rtol=1e-12, atol=1e-12)
        assert not output[~visible].any()
        torch.testing.assert_close(norm.weight.grad, weight.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(norm.bias.grad, bias.grad, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            norm.running_mean.copy_(running[0])
            norm.running_var.copy_(running[1])


def test_masked_sites_do_not_influence_visible_outputs():
    backbone = _perturbed(_backbones()['timm_convnextv2']()).eval()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    visible = torch.tensor([[[True, False], [False, True]]] * 2)
    changed = images.clone()
    changed[:, :, :32, 32:] = 100.0   # a hidden patch
    for sparse in (True, False):
        first = encode_masked(backbone, images, visible, sparse)[-1].to_dense()
        second = encode_masked(backbone, changed, visible, sparse)[-1].to_dense()
        assert torch.equal(first, second)


def test_grn_normalises_each_sample_over_its_own_visible_sites():
    """ConvNeXt V2's sparse GRN must not couple samples (ConvNeXt-V2 #86): batched equals one at a time."""
    backbone = _perturbed(_backbones()['timm_convnextv2']())
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    visible = torch.tensor([[[True, False], [False, True]], [[True, True], [True, False]]])
    for sparse in (True, False):
        batched = encode_masked(backbone, images, visible, sparse)[-1].to_dense()
        for i in range(2):
            alone = encode_masked(backbone, images[i:i + 1], visible[i:i + 1], sparse)[-1].to_dense()
            torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-10, atol=1e-10)


def test_grn_matches_its_formula_over_visible_sites():
    from timm.layers.grn import GlobalResponseNorm

    grn = GlobalResponseNorm(5, eps=1e-6).double()
    with torch.no_grad():
        grn.weight.normal_()
        grn.bias.normal_()
    visible = torch.tensor([[[True, False], [False, False]], [[True, True], [False, True]]])
    pyramid = MaskPyramid(visible)
    x = torch.randn(2, 4, 4, 5, dtype=torch.float64) * pyramid.mask(4, 4)[..., None]
    from sparsevision.models.masked_pretraining import SparseSiteMap
    feature_map = SparseSiteMap.from_dense(x.permute(0, 3, 1, 2), pyramid).permute(0, 2, 3, 1)
    result = grn(feature_map).to_dense()
    norms = x.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()   # masked sites are zero: sums over visible ones
    expected = (x + grn.bias + grn.weight * x * norms / (norms.mean(dim=-1, keepdim=True) + 1e-6))
    expected = expected * pyramid.mask(4, 4)[..., None]
    torch.testing.assert_close(result, expected)


def test_sparse_encoder_is_deterministic_across_threads_and_runs():
    backbone = ResNet(depth=18, in_channels=3, base_channels=16, small_input=True, out_indices=(0, 1, 2, 3))
    images = torch.randn(4, 3, 64, 64)
    visible = random_patch_mask(4, (8, 8), 0.6, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 2):
            torch.set_num_threads(count)
            results.append(_outputs_and_gradients(backbone, images, visible, True))
    finally:
        torch.set_num_threads(threads)
    for outputs, gradients in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs, results[0][0]))
        assert all(torch.equal(a, b) for a, b in zip(gradients, results[0][1]))


def test_random_patch_mask_hides_the_requested_share():
    generator = torch.Generator().manual_seed(0)
    visible = random_patch_mask(5, (7, 7), 0.6, generator=generator)
    assert visible.shape == (5, 7, 7)
    assert (visible.flatten(1).sum(dim=1) == 49 - round(0.6 * 49)).all()
    assert random_patch_mask(3, (2, 2), 0.0).all()
    assert (random_patch_mask(3, (2, 2), 0.99).flatten(1).sum(dim=1) == 1).all()   # one patch always stays
    again = random_patch_mask(5, (7, 7), 0.6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(visible, again)


@pytest.mark.parametrize('ratio', [-0.1, 1.0, 1.5])
def test_mask_ratio_outside_range_is_refused(ratio):
    with pytest.raises(ValueError, match=r'mask_ratio must lie in \[0, 1\)'):
        random_patch_mask(1, (2, 2), ratio)
    with pytest.raises(ValueError, match='mask_ratio'):
        _spark(mask_ratio=ratio)


def test_patchify_round_trip_and_loss():
    images = torch.randn(2, 3, 16, 24)
    patches = patchify(images, 8)
    assert patches.shape == (2, 6, 192)
    assert torch.equal(unpatchify(patches, 8, (2, 3)), images)
    assert torch.equal(patches[0, 4].reshape(8, 8, 3).permute(2, 0, 1), images[0, :, 8:16, 8:16])
    visible = torch.tensor([[True, False, True, True, True, False], [True] * 6])
    predicted = torch.zeros_like(patches)
    expected = (patches[0, 1].pow(2).mean() + patches[0, 5].pow(2).mean()) / 2
    torch.testing.assert_close(masked_patch_loss(predicted, patches, visible), expected)
    assert masked_patch_loss(predicted, patches, torch.ones_like(visible)) == 0


def _spark(**kwargs):
    arguments = dict(type='SparK', backbone=dict(type='ResNet', depth=10, in_channels=1, base_channels=8,
                                                 small_input=True, out_indices=(0, 1, 2, 3)),
                     input_size=16, in_channels=1)
    arguments.update(kwargs)
    return MODELS.build(arguments)


@pytest.mark.parametrize('sparse', [True, False])
def test_spark_trains_and_reconstructs(sparse):
    torch.manual_seed(0)
    model = _spark(sparse=sparse)
    assert model.downsample_ratio == 8 and model.grid == (2, 2)
    images = torch.rand(4, 1, 16, 16)
    loss = model(images, mode='loss')['loss']
    loss.backward()
    assert loss.item() > 0 and model.backbone.stem[0].weight.grad.abs().sum() > 0
    assert model.mask_tokens[0].grad is not None
    visible = torch.tensor([[[True, False], [False, True]]] * 4)
    reconstruction = model(images, mode='predict', visible=visible)
    assert reconstruction.shape == images.shape
    assert torch.equal(reconstruction[:, :, :8, :8], images[:, :, :8, :8])   # visible patches are the input's


def test_spark_sparse_and_dense_masked_losses_and_gradients_agree():
    torch.manual_seed(0)
    model = _spark().double()
    images = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    visible = model.random_mask(4, generator=torch.Generator().manual_seed(1))
    results = []
    for sparse in (True, False):
        model.sparse = sparse
        model.zero_grad()
        loss = model(images, mode='loss', visible=visible)['loss']
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_all_masked_and_all_visible_masks_are_defined():
    model = _spark()
    images = torch.rand(2, 1, 16, 16)
    before = model.backbone.stem[1].running_mean.clone()
    hidden = model(images, mode='loss', visible=torch.zeros(2, 2, 2, dtype=torch.bool))['loss']
    hidden.backward()   # every patch predicted from mask tokens alone
    assert torch.isfinite(hidden) and hidden > 0
    assert torch.equal(model.backbone.stem[1].running_mean, before)   # no visible site: statistics untouched
    shown = model(images, mode='loss', visible=torch.ones(2, 2, 2, dtype=torch.bool))['loss']
    assert shown.item() == 0   # nothing hidden, nothing to predict


def test_fcmae_on_convnextv2_trains():
    torch.manual_seed(0)
    model = MODELS.build(dict(type='FCMAE', backbone=dict(type='TimmBackbone', model_name='convnextv2_atto',
                                                          patch_size=1, in_channels=1),
                              input_size=16, in_channels=1, decoder_dim=32, normalize_target=False))
    assert model.downsample_ratio == 8
    images = torch.rand(2, 1, 16, 16)
    loss = model(images, mode='loss')['loss']
    loss.backward()
    assert torch.isfinite(loss) and model.mask_token.grad is not None
    assert model(images, mode='predict').shape == images.shape


def test_pretrained_encoder_loads_into_a_classifier():
    spark = _spark()
    classifier = ImageClassifier(backbone=dict(type='ResNet', depth=10, in_channels=1, base_channels=8,
                                               small_input=True), neck=dict(type='GlobalAveragePooling'),
                                 head=dict(type='ClassificationHead', num_classes=10, in_channels=64))
    encoder = {key[len('backbone.'):]: value for key, value in spark.state_dict().items()
               if key.startswith('backbone.')}
    classifier.backbone.load_state_dict(encoder, strict=True)   # every key and shape lines up
    assert torch.equal(classifier.backbone.stem[0].weight, spark.backbone.stem[0].weight)


def test_input_size_not_a_multiple_of_the_downsample_ratio_is_refused():
    with pytest.raises(ValueError, match='multiple of'):
        _spark(input_size=20)
    model = _spark()
    with pytest.raises(ValueError, match=r'built for \[B, 1, 16, 16\]'):
        model(torch.rand(2, 1, 24, 24))
    with pytest.raises(ValueError, match='visible must be a bool mask'):
        model(torch.rand(2, 1, 16, 16), visible=torch.ones(2, 4, 4, dtype=torch.bool))


class _WithGroupNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)

    def forward(self, x):
        return self.norm(self.conv(x))


class _WithFlip(nn.Module):
    def forward(self, x):
        return x.flip(3)


class _WithInterpolate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=2)


def test_unknown_layers_and_functions_are_named_never_run_densely():
    with pytest.raises(ValueError, match=r"layer 'norm' \(torch.nn.modules.normalization.GroupNorm\)"):
        check_maskable(_WithGroupNorm())
    with pytest.raises(ValueError, match="pads with 'reflect'"):
        check_maskable(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode='reflect')))
    with pytest.raises(ValueError, match="layer 'norm'"):
        SparK(backbone=_WithGroupNorm(), input_size=16)
    module = _WithInterpolate()
    check_maskable(module)
    with pytest.raises(TypeError, match='interpolate has no masked version'):
        encode_masked(module, torch.rand(1, 3, 8, 8), torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match='flip has no masked version'):
        encode_masked(_WithFlip(), torch.rand(1, 3, 8, 8), torch.ones(1, 2, 2, dtype=torch.bool))


def test_spatially_varying_tensors_cannot_be_mixed_with_masked_maps():
    module = nn.Conv2d(3, 3, 1)
    pyramid_maps = encode_masked(module, torch.rand(1, 3, 8, 8), torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match='varies over space'):
        pyramid_maps[0] + torch.rand(1, 3, 8, 8)


def test_batch_norm_on_a_single_visible_site_says_what_to_do():
    module = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)).train()
    visible = torch.zeros(1, 4, 4, dtype=torch.bool)
    visible[0, 0, 0] = True
    with pytest.raises(ValueError, match='more than one visible site'):
        encode_masked(module, torch.rand(1, 1, 4, 4), visible)
