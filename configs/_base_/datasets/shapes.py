# 8 primitive shapes: randomly scaled, rotated and jittered surface samples, voxelised on a 24^3 grid (~770 occupied
# voxels each); 300 training and 50 validation samples per shape. Add your own meshes with mesh_files=[...].
class_names = ('box', 'sphere', 'cylinder', 'cone', 'torus', 'tetrahedron', 'octahedron', 'arrow')
dataset = dict(type='ShapeClassificationDataset', shapes=class_names, grid=24,
               pipeline=[dict(type='PackPointCloudInputs')])
train_dataloader = dict(batch_size=16, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
                        dataset=dict(dataset, split='train', samples_per_class=300))
val_dataloader = dict(batch_size=32, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                      dataset=dict(dataset, split='val', samples_per_class=50))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator
