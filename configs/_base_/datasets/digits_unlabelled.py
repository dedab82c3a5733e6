# The real digits' train split for self-supervised pretraining: labels unused, no validation or test loop
# (configs using this set val_cfg = test_cfg = None, which the schedule base defines).
image_size = 32
train_pipeline = [
    dict(type='ResizeImage', size=image_size),
    dict(type='RandomAffine', max_rotation=12.0, scale_range=(0.9, 1.1), max_translation=0.08),
    dict(type='PackClassificationInputs'),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='DigitsDataset', split='train', pipeline=train_pipeline),
)
val_dataloader = None
val_evaluator = None
test_dataloader = None
test_evaluator = None
# pixel values are in [0, 1]; digits are bright ink on a dark background
model = dict(data_preprocessor=dict(type='ImgDataPreprocessor', mean=[0.3], std=[0.4]))
