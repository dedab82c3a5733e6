"""Registry-parametrised model tests: every zoo model runs forward and backward on a tiny CPU batch."""
import pytest
import torch
from mmengine.structures import BaseDataElement

import sparsevision
from sparsevision.model_zoo import load_config
from sparsevision.registry import MODELS
from sparsevision.sparse import grid_shape

ZOO = sparsevision.list_models()


def _registered_types(cfg) -> set:
    found = set()
    if isinstance(cfg, dict):
        if isinstance(cfg.get('type'), str):
            found.add(cfg['type'].removeprefix('sparsevision.'))
        for value in cfg.values():
            found |= _registered_types(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            found |= _registered_types(value)
    return found


def test_every_registered_model_is_in_the_zoo():
    """So the parametrised tests below cover it: add a config when you register a model."""
    import sparsevision.models  # noqa: F401

    used = set().union(*(_registered_types(load_config(name).model.to_dict()) for name in ZOO))
    registered = {name for name, cls in MODELS.module_dict.items() if cls.__module__.startswith('sparsevision.')}
    assert registered <= used, f'registered models with no zoo config: {sorted(registered - used)}'


def _random_inputs(model, model_cfg, count: int) -> list:
    """Per-sample inputs the model's data preprocessor takes: images, or voxelised point clouds."""
    if model_cfg.data_preprocessor.type == 'SparseDataPreprocessor':
        channels = model_cfg.backbone.in_channels
        detector = model_cfg.type == 'CenterPoint'   # runs on the grid its geometry defines
        grid = list(grid_shape(model_cfg.voxel_size, model_cfg.point_cloud_range)) if detector else [12, 12, 12]
        samples = []
        for _ in range(count):
            coordinates = torch.unique(torch.stack([torch.randint(0, size, (300,), dtype=torch.int32)
                                                    for size in grid], dim=1), dim=0)
            samples.append(dict(coordinates=coordinates, features=torch.rand(coordinates.shape[0], channels),
                                spatial_shape=grid))
        return samples
    if 'mean' not in model_cfg.data_preprocessor:   # event frames [T, polarity, H, W], used as given
        return [torch.randint(0, 3, (4, model_cfg.backbone.in_channels, 34, 34)).float() for _ in range(count)]
    channels = len(model_cfg.data_preprocessor.mean)
    size = getattr(model, 'input_size', (32, 32))   # masked autoencoders are built for one input size
    return [torch.rand(channels, *size) for _ in range(count)]


@pytest.mark.parametrize('name', ZOO)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = sparsevision.create_model(name)
    model_cfg = load_config(name).model
    samples = [BaseDataElement(gt_label=torch.tensor(label)) for label in (1, 7)]
    inputs = _random_inputs(model, model_cfg, len(samples))
    segmentor = model_cfg.type == 'SparseSegmentor'
    for sample, sample_inputs in zip(samples, inputs if segmentor else ()):   # one label per site
        sample.gt_seg = torch.randint(0, model_cfg.num_classes, (sample_inputs['coordinates'].shape[0],))
    detector = model_cfg.type == 'CenterPoint'
    for sample in samples if detector else ():   # two boxes near the centre of the range
        sample.gt_bboxes_3d = torch.tensor([[2.0, 1.0, -1.0, 4.5, 1.9, 1.6, 0.3],
                                            [-6.0, -3.0, -1.0, 4.0, 1.8, 1.5, 2.0]])
        sample.gt_labels_3d = torch.zeros(2, dtype=torch.long)
    raw = dict(inputs=inputs, data_samples=samples)
    data = model.data_preprocessor(raw, True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    loss.backward()
    assert torch.isfinite(loss)
    without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not without_grad, f'parameters without gradient: {without_grad[:5]}'
    model.eval()
    predictions = model(**model.data_preprocessor(raw, False), mode='predict')
    if isinstance(predictions, torch.Tensor):   # a masked autoencoder reconstructs its input
        assert predictions.shape == data['inputs'].shape
    elif segmentor:
        assert [p.pred_seg.shape for p in predictions] == [s.gt_seg.shape for s in samples]
    elif detector:
        assert all(p.pred_instances_3d.bboxes_3d.shape[1] == 7 for p in predictions)
    else:
        classes = model_cfg.head.num_classes
        assert [p.pred_score.shape for p in predictions] == [(classes,), (classes,)]
