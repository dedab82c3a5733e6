# Few-label fine-tuning: the quarter-width ResNet-18 on 10 labelled digits per class (100 images), its encoder
# initialised from SparK pretraining on the unlabelled train split (the shipped spark_resnet18_w16_digits weights;
# to use your own run, point `pretrained` at work_dirs/spark_resnet18_w16_digits/epoch_200.pth).
# The from-scratch baseline is this config with --cfg-options model.backbone.init_cfg=None.
_base_ = ['../resnet/resnet18_w16_digits.py']

pretrained = 'zoo:spark_resnet18_w16_digits'   # read by tools/train.py from any directory or install
model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')))
train_dataloader = dict(dataset=dict(labels_per_class=10))
max_epochs = 100
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=5, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=max_epochs))
