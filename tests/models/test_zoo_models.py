"""Registry-parametrised model tests: every zoo model runs forward and backward on a tiny CPU batch."""
import pytest
import torch
from mmengine.structures import BaseDataElement

import sparsevision
from sparsevision.model_zoo import load_config
from sparsevision.registry import MODELS

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


@pytest.mark.parametrize('name', ZOO)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = sparsevision.create_model(name)
    channels = len(load_config(name).model.data_preprocessor.mean)
    size = getattr(model, 'input_size', (32, 32))   # masked autoencoders are built for one input size
    samples = [BaseDataElement(gt_label=torch.tensor(label)) for label in (1, 7)]
    data = model.data_preprocessor(dict(inputs=[torch.rand(channels, *size) for _ in samples],
                                        data_samples=samples), True)
    losses = model(**data, mode='loss')
    losses['loss'].backward()
    assert torch.isfinite(losses['loss'])
    without_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not without_grad, f'parameters without gradient: {without_grad[:5]}'
    model.eval()
    predictions = model(**model.data_preprocessor(data, False), mode='predict')
    if isinstance(predictions, torch.Tensor):   # a masked autoencoder reconstructs its input
        assert predictions.shape == data['inputs'].shape
    else:
        assert [p.pred_score.shape for p in predictions] == [(10,), (10,)]
