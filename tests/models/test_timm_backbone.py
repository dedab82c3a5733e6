"""TimmBackbone: timm feature extractors in the zoo, with timm's pretrained-weight loading passed through."""
import timm
import torch

from sparsevision.models.backbones import TimmBackbone


def test_pretrained_weights_from_a_local_file_arrive(tmp_path):
    torch.manual_seed(3)
    weights = timm.create_model('test_resnet').state_dict()
    path = tmp_path / 'test_resnet.pth'
    torch.save(weights, path)
    local_file = dict(pretrained_cfg_overlay=dict(file=str(path)))

    def matches(backbone: TimmBackbone) -> bool:
        return all(torch.equal(value, weights[key]) for key, value in backbone.model.state_dict().items())

    backbone = TimmBackbone('test_resnet', out_indices=(1, 2), pretrained=True, **local_file)
    assert matches(backbone)
    backbone.init_weights()   # what a runner does first: must not re-initialise timm's weights
    assert matches(backbone) and len(backbone(torch.randn(1, 3, 64, 64))) == 2
    assert not matches(TimmBackbone('test_resnet', out_indices=(1, 2), **local_file))   # pretrained is off by default
