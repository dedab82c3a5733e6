"""Classification head: optional linear classifier, cross-entropy loss, predictions."""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.structures import BaseDataElement

from ...registry import MODELS

Features = Union[torch.Tensor, Sequence[torch.Tensor]]


@MODELS.register_module()
class ClassificationHead(nn.Module):
    """Turns pooled features (or a backbone's own logits) into losses and predictions.

    Args:
        num_classes: number of classes.
        in_channels: feature width; adds a linear classifier. ``None`` when the
            backbone already returns logits (e.g. a timm ViT with its head).
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(self, num_classes: int, in_channels: Optional[int] = None, label_smoothing: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.fc = nn.Linear(in_channels, num_classes) if in_channels is not None else None

    def forward(self, features: Features) -> torch.Tensor:
        """Logits ``[B, num_classes]`` from the last feature of the input."""
        if not isinstance(features, torch.Tensor):
            features = features[-1]
        logits = features if self.fc is None else self.fc(features)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f'ClassificationHead expects [batch, {self.num_classes}] logits, '
                             f'got shape {tuple(logits.shape)}')
        return logits

    def loss(self, features: Features, data_samples: List[BaseDataElement]) -> dict:
        labels = torch.stack([sample.gt_label for sample in data_samples]).to(self._device(features))
        return dict(loss=F.cross_entropy(self(features), labels, label_smoothing=self.label_smoothing))

    def predict(self, features: Features, data_samples: Optional[List[BaseDataElement]] = None):
        scores = self(features).softmax(dim=1)
        if data_samples is None:
            data_samples = [BaseDataElement() for _ in range(scores.shape[0])]
        for sample, score in zip(data_samples, scores):
            sample.set_field(score, 'pred_score')
            sample.set_field(score.argmax(), 'pred_label')
        return data_samples

    @staticmethod
    def _device(features: Features) -> torch.device:
        return (features if isinstance(features, torch.Tensor) else features[-1]).device
