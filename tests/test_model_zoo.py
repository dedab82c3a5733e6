"""list_models / create_model on top of the configs."""
import pytest
import torch

import sparsevision
from sparsevision.model_zoo import pretrained_weights


def test_list_models_names_every_config(repo_root):
    names = sparsevision.list_models()
    configs = sorted(p.stem for p in repo_root.glob('configs/*/*.py') if p.parent.name != '_base_')
    assert sorted(names) == configs
    assert sparsevision.list_models('vit_*') == [n for n in names if n.startswith('vit_')]


def test_create_model_with_overrides():
    model = sparsevision.create_model('resnet18_w16_digits', **{'backbone.depth': 10, 'backbone.base_channels': 8,
                                                                'head.in_channels': 64})
    assert len(model.backbone.stages[0]) == 1
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_create_model_from_config_file(repo_root):
    model = sparsevision.create_model(repo_root / 'configs/vit/vit_tiny_p4_digits.py')
    assert model.backbone.patch_embed.patch_size == (4, 4)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match='known models: .*resnet18_w16_digits'):
        sparsevision.create_model('no_such_model')


@pytest.mark.parametrize('name', ['resnet18_w16_digits', 'vit_tiny_p4_digits'])
def test_shipped_weights_load(name):
    assert pretrained_weights(name) is not None, f'{name} should ship trained weights'
    model = sparsevision.create_model(name, checkpoint='zoo')
    assert not model.training


def test_checkpoint_of_another_model_is_refused():
    with pytest.raises(ValueError, match='does not fit ImageClassifier'):
        sparsevision.create_model('vit_tiny_p4_digits', checkpoint=pretrained_weights('resnet18_w16_digits'))


def test_an_unrelated_top_level_configs_folder_does_not_replace_the_zoo(tmp_path, monkeypatch):
    from sparsevision import model_zoo

    monkeypatch.delenv('SPARSEVISION_CONFIGS', raising=False)
    package = tmp_path / 'site-packages' / 'sparsevision'
    (package / '.mim' / 'configs').mkdir(parents=True)
    (tmp_path / 'site-packages' / 'configs').mkdir()  # another distribution's top-level configs/
    monkeypatch.setattr(model_zoo, 'PACKAGE_DIR', package)
    assert model_zoo.configs_dir() == package / '.mim' / 'configs'
    (tmp_path / 'site-packages' / 'setup.py').touch()  # a sparsevision checkout instead: its configs/ win
    assert model_zoo.configs_dir() == tmp_path / 'site-packages' / 'configs'
