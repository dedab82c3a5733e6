"""Image classifier for token-pruning backbones: router losses and distillation from a dense teacher."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement

from ...registry import MODELS
from ...utils.checkpoint import load_checkpoint
from .image_classifier import ImageClassifier


@MODELS.register_module()
class TokenPruningClassifier(ImageClassifier):
    """:class:`ImageClassifier` whose training loss adds the router's own losses (DynamicViT's keep ratio)
    and, with a teacher, the KL divergence from a frozen dense teacher's predictions (DynamicViT's
    distillation; useful for any pruning method).

    Args:
        backbone: a token-pruning backbone (``TokenPruningViT``) returning logits.
        head: classification head config.
        teacher: config of the dense teacher model (an ``ImageClassifier``), or ``None``.
        teacher_checkpoint: its weights (required with ``teacher``).
        distill_weight: weight of the distillation loss.
        distill_temperature: softmax temperature of the distillation.
        **kwargs: ``ImageClassifier`` arguments (``neck``, ``data_preprocessor``, ``init_cfg``).
    """

    def __init__(self, backbone: dict, head: dict, teacher: Optional[dict] = None,
                 teacher_checkpoint: Optional[str] = None, distill_weight: float = 0.5,
                 distill_temperature: float = 1.0, **kwargs):
        super().__init__(backbone, head, **kwargs)
        if not hasattr(self.backbone, 'forward_with_state'):
            raise ValueError(f'TokenPruningClassifier needs a token-pruning backbone, got {type(self.backbone).__name__}')
        teacher_model = None
        if teacher is not None:
            if teacher_checkpoint is None:
                raise ValueError('a distillation teacher needs teacher_checkpoint (its trained weights)')
            teacher_model = load_checkpoint(MODELS.build(teacher), teacher_checkpoint).requires_grad_(False).eval()
        # Not a submodule: the frozen teacher stays out of checkpoints, optimizers, DDP and train()/eval() switches.
        object.__setattr__(self, 'teacher', teacher_model)
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)   # follows the student across devices and dtypes
        return self

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        if mode != 'loss':
            return super().forward(inputs, data_samples, mode)
        logits, state = self.backbone.forward_with_state(inputs)
        features = self.neck(logits) if self.neck is not None else logits
        losses = self.head.loss(features, data_samples)
        losses.update(self.backbone.router.losses(state))
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(inputs, mode='tensor')
            temperature = self.distill_temperature
            losses['loss_distill'] = self.distill_weight * temperature ** 2 * F.kl_div(
                F.log_softmax(self.head(features) / temperature, dim=1),
                F.log_softmax(teacher_logits / temperature, dim=1), log_target=True, reduction='batchmean')
        return losses
