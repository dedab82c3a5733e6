# sklearn's 1,797 real handwritten digits, 8x8 upsampled to 32x32; fixed stratified 80/20 split.
image_size = 32
train_pipeline = [
    dict(type='ResizeImage', size=image_size),
    dict(type='RandomAffine', max_rotation=12.0, scale_range=(0.9, 1.1), max_translation=0.08),
    dict(type='PackClassificationInputs'),
]
test_pipeline = [
    dict(type='ResizeImage', size=image_size),
    dict(type='PackClassificationInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='DigitsDataset', split='train', pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='DigitsDataset', split='val', pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator
# pixel values are in [0, 1]; digits are bright ink on a dark background
model = dict(data_preprocessor=dict(type='ImgDataPreprocessor', mean=[0.3], std=[0.4]))
