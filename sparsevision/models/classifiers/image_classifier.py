"""Image classifier: backbone, optional neck, head."""
from typing import List, Optional

import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement

from ...registry import MODELS


@MODELS.register_module()
class ImageClassifier(BaseModel):
    """backbone -> neck -> head, with mmengine's ``loss`` / ``predict`` / ``tensor`` modes.

    Args:
        backbone: config of the feature extractor.
        head: config of the classification head.
        neck: optional config between them (e.g. global pooling).
        data_preprocessor: batch normalisation and stacking config.
        init_cfg: mmengine initialisation config.
    """

    def __init__(self, backbone: dict, head: dict, neck: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck) if neck is not None else None
        self.head = MODELS.build(head)

    def extract_features(self, inputs: torch.Tensor):
        features = self.backbone(inputs)
        return self.neck(features) if self.neck is not None else features

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        features = self.extract_features(inputs)
        if mode == 'tensor':
            return self.head(features)
        if mode == 'loss':
            return self.head.loss(features, data_samples)
        if mode == 'predict':
            return self.head.predict(features, data_samples)
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")
