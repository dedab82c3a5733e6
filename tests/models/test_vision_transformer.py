"""The registered VisionTransformer loads timm state_dicts unchanged and gives timm's outputs."""
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

from sparsevision.registry import MODELS


def _same_outputs(timm_model, arguments, image_size):
    ours = MODELS.build(dict(type='sparsevision.VisionTransformer', **arguments))
    ours.load_state_dict(timm_model.state_dict(), strict=True)
    ours.eval(), timm_model.eval()
    image = torch.randn(2, arguments.get('in_chans', 3), image_size, image_size)
    with torch.no_grad():
        assert torch.equal(ours(image), timm_model(image))


def test_vit_small_patch16_224_state_dict():
    torch.manual_seed(0)
    reference = timm.create_model('vit_small_patch16_224', pretrained=False)
    _same_outputs(reference, dict(embed_dim=384, depth=12, num_heads=6), 224)


@pytest.mark.parametrize('arguments', [
    dict(init_values=1e-5),                      # LayerScale
    dict(reg_tokens=4, no_embed_class=True),     # register tokens
    dict(qk_norm=True, class_token=False, global_pool='avg'),
])
def test_current_timm_blocks(arguments):
    torch.manual_seed(0)
    common = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)
    reference = TimmVisionTransformer(**common, **arguments)
    _same_outputs(reference, {**common, **arguments}, 32)
