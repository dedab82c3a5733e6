"""The registries are children of mmengine's and resolve from other scopes and fresh processes."""
import importlib

import mmengine.registry as mmengine_registry
import pytest
from mmengine.registry import DefaultScope, Registry

import sparsevision.registry as registry

REGISTRY_NAMES = ['MODELS', 'DATASETS', 'TRANSFORMS', 'METRICS', 'HOOKS', 'VISUALIZERS', 'DATA_SAMPLERS',
                  'OPTIMIZERS', 'OPTIM_WRAPPERS', 'PARAM_SCHEDULERS', 'LOOPS', 'RUNNERS', 'EVALUATOR',
                  'INFERENCERS', 'TASK_UTILS', 'WEIGHT_INITIALIZERS', 'VISBACKENDS', 'LOG_PROCESSORS']


@pytest.mark.parametrize('name', REGISTRY_NAMES)
def test_child_of_mmengine_root(name):
    child = getattr(registry, name)
    assert child.scope == 'sparsevision'
    assert child.parent is getattr(mmengine_registry, name)


@pytest.mark.parametrize('name', REGISTRY_NAMES)
def test_locations_are_importable_packages(name):
    """mmengine imports these on first lookup; a missing one breaks every build from a clean checkout."""
    for location in getattr(registry, name)._locations:
        module = importlib.import_module(location)
        assert module.__file__ is not None, f'{location} is a namespace package (empty folder?)'


def test_build_from_fresh_process_that_imported_only_mmengine(python_process):
    code = ("from mmengine.registry import MODELS\n"
            "m = MODELS.build(dict(type='sparsevision.ResNet', depth=10, in_channels=1))\n"
            "print(type(m).__module__, type(m).__name__)")
    result = python_process(['-c', code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['sparsevision.models.backbones.resnet', 'ResNet']


def test_build_from_another_projects_scope():
    """What an mmdet3d config does: its own default scope, our types prefixed, nested types unprefixed."""
    other_models = Registry('model', parent=mmengine_registry.MODELS, scope='otherlib')
    with DefaultScope.overwrite_default_scope('otherlib'):
        model = other_models.build(dict(
            type='sparsevision.ImageClassifier',
            backbone=dict(type='ResNet', depth=10, in_channels=1, base_channels=8, small_input=True),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='ClassificationHead', num_classes=10, in_channels=64)))
    assert type(model).__name__ == 'ImageClassifier'
    assert type(model.backbone).__module__.startswith('sparsevision.')
