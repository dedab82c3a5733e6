"""TokenPruningClassifier: router losses, logit distillation and DynamicViT's token distillation."""
import pytest
import torch
from mmengine.structures import BaseDataElement

from sparsevision.models.classifiers.token_pruning_classifier import kept_token_mse
from sparsevision.registry import MODELS

VIT = dict(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0)
TEACHER = dict(type='ImageClassifier', backbone=dict(type='VisionTransformer', **VIT),
               head=dict(type='ClassificationHead', num_classes=10))


@pytest.fixture
def teacher_checkpoint(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / 'teacher.pth'
    torch.save(MODELS.build(TEACHER).state_dict(), path)
    return str(path)


def student(method: dict, teacher_checkpoint: str, **kwargs):
    torch.manual_seed(0)
    return MODELS.build(dict(type='TokenPruningClassifier',
                             backbone=dict(type='TokenPruningViT', method=method, **VIT),
                             head=dict(type='ClassificationHead', num_classes=10), teacher=TEACHER,
                             teacher_checkpoint=teacher_checkpoint, **kwargs))


def test_teacher_outputs_are_the_teachers_logits(teacher_checkpoint):
    model = student(dict(type='EViTRouter', keep_rate=0.7, locations=(1,)), teacher_checkpoint)
    images = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        tokens, logits = model.teacher_outputs(images)
        assert torch.equal(logits, model.teacher(images, mode='tensor'))
    assert tokens.shape == (3, 65, 32)


def test_dynamicvit_trains_with_token_distillation(teacher_checkpoint):
    model = student(dict(type='DynamicViTRouter', keep_rate=0.7, locations=(1, 2)), teacher_checkpoint,
                    token_distill_weight=0.5).train()
    samples = [BaseDataElement(gt_label=torch.tensor(label)) for label in (1, 2, 3, 4)]
    losses = model(torch.randn(4, 1, 32, 32), samples, mode='loss')
    assert {'loss_keep_ratio', 'loss_distill', 'loss_token_distill'} <= losses.keys()
    assert losses['loss_token_distill'] > 0
    sum(losses.values()).backward()
    assert model.backbone.blocks[2].attn.qkv.weight.grad is not None


def test_kept_token_mse_counts_only_kept_patch_tokens():
    student_tokens = torch.zeros(2, 4, 3)
    teacher_tokens = torch.zeros(2, 4, 3)
    teacher_tokens[:, 1] = 2.0    # a kept patch token: counts
    teacher_tokens[:, 2] = 100.0  # a dropped one: ignored
    teacher_tokens[:, 0] = 100.0  # the class token: ignored
    keep = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0]])
    assert kept_token_mse(student_tokens, teacher_tokens, keep, num_prefix=1).item() == pytest.approx(2.0)
    assert kept_token_mse(student_tokens, teacher_tokens, torch.zeros(2, 4), num_prefix=1).item() == 0


def test_token_distillation_needs_dynamicvit_and_a_teacher(teacher_checkpoint):
    with pytest.raises(ValueError, match='DynamicViTRouter'):
        student(dict(type='EViTRouter', keep_rate=0.7, locations=(1,)), teacher_checkpoint, token_distill_weight=0.5)
