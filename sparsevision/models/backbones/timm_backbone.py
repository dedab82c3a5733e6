"""Any timm CNN as a multi-scale backbone of the zoo."""
from typing import Sequence, Tuple

import torch
from mmengine.model import BaseModule

from ...registry import MODELS


@MODELS.register_module()
class TimmBackbone(BaseModule):
    """A timm model's stage outputs (``features_only``), e.g. ``resnet50`` or ``convnextv2_atto``.

    Weights: ``pretrained=True`` loads timm's (downloaded, or from a local file with
    ``pretrained_cfg_overlay=dict(file=PATH)``), or load a checkpoint of this backbone with
    ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    Args:
        model_name: a timm model name.
        out_indices: which stages to return.
        in_channels: image channels.
        pretrained: load timm's pretrained weights (``timm.create_model(pretrained=True)``).
        **model_args: passed to ``timm.create_model`` (``pretrained_cfg_overlay``, ``drop_path_rate``,
            ``patch_size``, ...).
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] = (0, 1, 2, 3), in_channels: int = 3,
                 init_cfg=None, pretrained: bool = False, **model_args):
        super().__init__(init_cfg)
        import timm

        if not timm.is_model(model_name):
            raise ValueError(f'timm has no model {model_name!r}')
        self.model = timm.create_model(model_name, pretrained=pretrained, features_only=True,
                                       out_indices=tuple(out_indices), in_chans=in_channels, **model_args)
        self.out_channels = tuple(self.model.feature_info.channels())

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.model(x))
