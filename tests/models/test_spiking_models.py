"""E-3DSNN and Meta-SpikeFormer: shapes, gradients, event-driven convolutions, bad input."""
import pytest
import torch

from sparsevision.models.spiking import E3DSNN, FiringMonitor, MetaSpikeFormer
from sparsevision.sparse import SparseTensor


def _point_clouds(batch=2, channels=4, size=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    indices = []
    for sample in range(batch):
        cells = torch.unique(torch.randint(0, size, (150, 3), generator=generator, dtype=torch.int32), dim=0)
        indices.append(torch.cat([torch.full((cells.shape[0], 1), sample, dtype=torch.int32), cells], dim=1))
    indices = torch.cat(indices)
    return SparseTensor(torch.rand(indices.shape[0], channels, generator=generator), indices, [size] * 3, batch)


def test_e3dsnn_forward_backward_and_integer_spikes():
    torch.manual_seed(0)
    model = E3DSNN(in_channels=4, channels=(8, 16), depths=(1, 1))
    x = _point_clouds()
    with FiringMonitor(model) as monitor:
        (out,) = model(x)
    assert out.shape == (2, 16)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    rates = monitor.summary()
    assert rates and all(0 <= layer['firing_rate'] <= 1 for layer in rates.values())
    assert any(layer['mean_spikes'] > layer['firing_rate'] for layer in rates.values())   # integer multi-spikes


def test_e3dsnn_samples_do_not_leak_into_each_other():
    model = E3DSNN(in_channels=4, channels=(8, 16), depths=(1, 1)).eval()
    x = _point_clouds(batch=2)
    first = x.indices[:, 0] == 0
    alone = SparseTensor(x.features[first], x.indices[first], x.spatial_shape, 1)
    torch.testing.assert_close(model(x)[0][:1], model(alone)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('frames', [False, True])
def test_meta_spikeformer_images_and_event_frames(frames):
    torch.manual_seed(0)
    model = MetaSpikeFormer(in_channels=2 if frames else 1, channels=(8, 16, 32), heads=2, time_steps=3)
    x = torch.rand(2, 5, 2, 32, 32) if frames else torch.rand(2, 1, 32, 32)
    (out,) = model(x)
    assert out.shape == (2, 32)
    out.sum().backward()
    assert model.stages[0][0].body[0].weight.grad is not None


def test_meta_spikeformer_is_deterministic_per_forward():
    model = MetaSpikeFormer(channels=(8, 16, 32), heads=2).eval()
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model(x)[0], model(x)[0])   # neuron state resets itself every forward


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='time_steps must be >= 1, got 0'):
        MetaSpikeFormer(time_steps=0)
    with pytest.raises(ValueError, match='time_steps must be an integer, got 1.5'):
        MetaSpikeFormer(time_steps=1.5)
    with pytest.raises(ValueError, match='time_steps must be an integer, got the bool True'):
        MetaSpikeFormer(time_steps=True)
    with pytest.raises(ValueError, match='heads'):
        MetaSpikeFormer(channels=(8, 16, 30), heads=4)
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        MetaSpikeFormer(channels=(8, 16, 32), heads=2)(torch.rand(32, 32))
    with pytest.raises(ValueError, match='same stages'):
        E3DSNN(channels=(8, 16), depths=(1,))


def test_e3dsnn_unet_segments_every_input_site():
    from mmengine.structures import BaseDataElement

    from sparsevision.models.segmentors import SparseSegmentor

    torch.manual_seed(0)
    model = SparseSegmentor(backbone=dict(type='E3DSNNUNet', in_channels=4, channels=(8, 16, 32), depths=(1, 1, 1)),
                            num_classes=5, in_channels=8)
    x = _point_clouds(batch=2, size=12)
    counts = x.indices[:, 0].long().bincount().tolist()
    samples = [BaseDataElement(gt_seg=torch.randint(0, 5, (count,))) for count in counts]
    loss = model(x, samples, mode='loss')['loss']
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.up[0][1].weight.grad is not None
    predicted = model(x, samples, mode='predict')
    assert [p.pred_seg.shape[0] for p in predicted] == counts


def test_mean_iou_by_hand():
    from sparsevision.evaluation import MeanIoU

    metric = MeanIoU(num_classes=3, class_names=('a', 'b', 'c'))
    metric.process(None, [dict(pred_seg=torch.tensor([0, 0, 1, 1]), gt_seg=torch.tensor([0, 1, 1, 1]))])
    result = metric.compute_metrics(metric.results)
    # class a: hit 1, union 2 -> 0.5; class b: hit 2, union 3 -> 2/3; class c absent
    assert result['IoU_a'] == pytest.approx(50.0) and result['IoU_b'] == pytest.approx(200 / 3)
    assert result['mIoU'] == pytest.approx((50 + 200 / 3) / 2) and result['accuracy'] == pytest.approx(75.0)
    assert 'IoU_c' not in result
    with pytest.raises(ValueError, match='class names'):
        MeanIoU(num_classes=3, class_names=('a',))
