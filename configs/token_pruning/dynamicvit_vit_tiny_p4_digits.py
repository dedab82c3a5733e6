# DynamicViT at keep 0.7 (3 stages), fine-tuned for 10 epochs from the dense digits ViT (96.10 % top-1) with the
# keep-ratio loss and distillation from the frozen dense model. As in the paper, the pretrained backbone and head
# learn at 0.01x the predictors' rate: the predictors learn the ranking, the backbone stays what it was.
_base_ = ['../vit/vit_tiny_p4_digits.py']

model = dict(
    type='TokenPruningClassifier',
    backbone=dict(type='TokenPruningViT', method=dict(type='DynamicViTRouter', keep_rate=0.7, locations=(1, 3, 4))),
    teacher=dict(
        type='ImageClassifier',
        backbone=dict(type='VisionTransformer', img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=128,
                      depth=6, num_heads=4, mlp_ratio=2.0),
        head=dict(type='ClassificationHead', num_classes=10)),
    teacher_checkpoint='zoo:vit_tiny_p4_digits',   # the shipped dense weights, from any directory
    distill_weight=0.5,
)
load_from = 'zoo:vit_tiny_p4_digits'
max_epochs = 10
train_cfg = dict(max_epochs=max_epochs)
optim_wrapper = dict(
    optimizer=dict(lr=1e-3),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.01), 'head': dict(lr_mult=0.01),
                                    'predictors': dict(lr_mult=1.0)}))   # the longest matching key wins
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
