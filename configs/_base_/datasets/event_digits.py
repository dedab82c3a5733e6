# Event-camera digits: the real digits moved in three saccades in front of a simulated 34x34 event sensor
# (~5,100 events each). Configs choose the representation (frames or voxels) and the time bins.
dataset = dict(type='EventDigitsDataset', pipeline=[dict(type='PackEventInputs')])
train_dataloader = dict(batch_size=32, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
                        dataset=dict(dataset, split='train'))
val_dataloader = dict(batch_size=128, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(dataset, split='val'))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator
