"""Global average pooling of feature maps."""
from typing import Sequence, Tuple, Union

import torch
import torch.nn as nn

from ...registry import MODELS


@MODELS.register_module()
class GlobalAveragePooling(nn.Module):
    """Average every ``[B, C, *spatial]`` map over its spatial dimensions to ``[B, C]``."""

    def forward(self, features: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Tuple[torch.Tensor, ...]:
        if isinstance(features, torch.Tensor):
            features = (features,)
        return tuple(feature.flatten(2).mean(-1) for feature in features)
