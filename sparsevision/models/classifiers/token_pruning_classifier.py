"""Image classifier for token-pruning backbones: router losses and distillation from a dense teacher."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from mmengine.structures import BaseDataElement

from ...registry import MODELS
from ...utils.checkpoint import load_checkpoint
from ..token_pruning import DynamicViTRouter
from .image_classifier import ImageClassifier


@MODELS.register_module()
class TokenPruningClassifier(ImageClassifier):
    """:class:`ImageClassifier` whose training loss adds the router's own losses (DynamicViT's keep ratio)
    and, with a teacher, the KL divergence from a frozen dense teacher's predictions (DynamicViT's
    distillation; useful for any pruning method). ``token_distill_weight`` adds DynamicViT's token
    distillation: the mean squared difference between the student's and the teacher's final patch tokens,
    over the tokens the student still keeps (DynamicViT only: it keeps every token in training, masked).

    Args:
        backbone: a token-pruning backbone (``TokenPruningViT``) returning logits.
        head: classification head config.
        teacher: config of the dense teacher model (an ``ImageClassifier``), or ``None``.
        teacher_checkpoint: its weights (required with ``teacher``).
        distill_weight: weight of the distillation loss.
        distill_temperature: softmax temperature of the distillation.
        token_distill_weight: weight of the token distillation (0 turns it off).
        **kwargs: ``ImageClassifier`` arguments (``neck``, ``data_preprocessor``, ``init_cfg``).
    """

    def __init__(self, backbone: dict, head: dict, teacher: Optional[dict] = None,
                 teacher_checkpoint: Optional[str] = None, distill_weight: float = 0.5,
                 distill_temperature: float = 1.0, token_distill_weight: float = 0.0, **kwargs):
        super().__init__(backbone, head, **kwargs)
        if not hasattr(self.backbone, 'forward_with_state'):
            raise ValueError('TokenPruningClassifier needs a token-pruning backbone, got '
                             f'{type(self.backbone).__name__}')
        teacher_model = None
        if teacher is not None:
            if teacher_checkpoint is None:
                raise ValueError('a distillation teacher needs teacher_checkpoint (its trained weights)')
            teacher_model = load_checkpoint(MODELS.build(teacher), teacher_checkpoint).requires_grad_(False).eval()
        # Not a submodule: the frozen teacher stays out of checkpoints, optimizers, DDP and train()/eval() switches.
        object.__setattr__(self, 'teacher', teacher_model)
        if token_distill_weight and (teacher_model is None or not isinstance(self.backbone.router, DynamicViTRouter)):
            raise ValueError('token_distill_weight needs a teacher and a DynamicViTRouter backbone (the only method '
                             f'that keeps every token in training); got router {type(self.backbone.router).__name__}'
                             f'{"" if teacher_model is not None else " and no teacher"}')
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        self.token_distill_weight = token_distill_weight

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)   # follows the student across devices and dtypes
        return self

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        if mode != 'loss':
            return super().forward(inputs, data_samples, mode)
        tokens, state = self.backbone.forward_tokens(inputs)
        logits = self.backbone.output(tokens, state)
        features = self.neck(logits) if self.neck is not None else logits
        losses = self.head.loss(features, data_samples)
        losses.update(self.backbone.router.losses(state))
        if self.teacher is not None:
            with torch.no_grad():
                teacher_tokens, teacher_logits = self.teacher_outputs(inputs)
            if self.token_distill_weight:
                losses['loss_token_distill'] = self.token_distill_weight * kept_token_mse(
                    tokens, teacher_tokens, state.keep, state.num_prefix)
            temperature = self.distill_temperature
            losses['loss_distill'] = self.distill_weight * temperature ** 2 * F.kl_div(
                F.log_softmax(self.head(features) / temperature, dim=1),
                F.log_softmax(teacher_logits / temperature, dim=1), log_target=True, reduction='batchmean')
        return losses

    def teacher_outputs(self, inputs: torch.Tensor):
        """The teacher's final-norm tokens ``[B, N, C]`` and its logits (what ``mode='tensor'`` returns)."""
        backbone = self.teacher.backbone
        tokens = backbone.forward_features(inputs)
        features = backbone.forward_head(tokens)
        if self.teacher.neck is not None:
            features = self.teacher.neck(features)
        return tokens, self.teacher.head(features)


def kept_token_mse(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Mean squared difference of the patch tokens whose final keep decision is 1 (DynamicViT's token loss)."""
    kept = keep[:, num_prefix:].detach() > 0.5
    if not kept.any():
        return student.sum() * 0
    return F.mse_loss(student[:, num_prefix:][kept], teacher[:, num_prefix:][kept])
