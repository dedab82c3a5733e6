"""tools/train.py and tools/test.py refuse what they cannot use: a clear error, never a run on the wrong thing."""
import pytest
import torch

from sparsevision.cli import test as test_tool
from sparsevision.cli import train as train_tool

CONFIG = 'configs/resnet/resnet18_w16_digits.py'
SMALL_TEST = ['test_dataloader.dataset.indices=32']


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """An empty config, a .txt config, a plain state_dict and a truncated checkpoint."""
    root = tmp_path_factory.mktemp('bad')
    (root / 'empty.py').write_text('')
    (root / 'config.txt').write_text("model = dict(type='ImageClassifier')\n")
    weights = torch.load('sparsevision/model_zoo/weights/resnet18_w16_digits.pth', weights_only=True)
    torch.save(weights, root / 'plain.pth')
    torch.save({'meta': {'epoch': 1, 'iter': 1}, 'state_dict': weights, 'message_hub': {}}, root / 'runner.pth')
    (root / 'truncated.pth').write_bytes((root / 'runner.pth').read_bytes()[:4096])
    return root


@pytest.mark.parametrize('case, message', [
    ('empty', 'has no model'),
    ('directory', 'is a directory'),
    ('text', 'is not a .py config file'),
    ('truncated', 'truncated, damaged or not a torch checkpoint'),
    ('missing', 'does not exist'),
    ('unknown zoo weights', "no shipped weights 'zoo:nope'"),
    ('another model', 'does not fit ImageClassifier'),
])
def test_test_tool_refuses(case, message, files, tmp_path):
    config, checkpoint = {
        'empty': (files / 'empty.py', 'zoo:resnet18_w16_digits'),
        'directory': (files, 'zoo:resnet18_w16_digits'),
        'text': (files / 'config.txt', 'zoo:resnet18_w16_digits'),
        'truncated': (CONFIG, files / 'truncated.pth'),
        'missing': (CONFIG, files / 'nope.pth'),
        'unknown zoo weights': (CONFIG, 'zoo:nope'),
        'another model': (CONFIG, 'zoo:vit_tiny_p4_digits'),
    }[case]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        test_tool.main([str(config), str(checkpoint), '--work-dir', str(tmp_path), '--cfg-options', *SMALL_TEST])


def test_test_tool_takes_zoo_weights_and_partial_loading_on_request(tmp_path):
    metrics = test_tool.main([CONFIG, 'zoo:resnet18_w16_digits', '--work-dir', str(tmp_path / 'a'),
                              '--cfg-options', 'experiment_name=zoo_weights', *SMALL_TEST])
    assert metrics['accuracy/top1'] > 90
    metrics = test_tool.main([CONFIG, 'zoo:vit_tiny_p4_digits', '--work-dir', str(tmp_path / 'b'),
                              '--cfg-options', 'strict_checkpoint=False', 'experiment_name=partial', *SMALL_TEST])
    assert metrics['accuracy/top1'] < 50  # what mmengine's non-strict load gives: an untrained model


@pytest.mark.parametrize('case, message', [
    ('empty config', 'has no model, train_dataloader'),
    ('zero epochs', 'max_epochs must be a positive integer, got 0'),
    ('fractional epochs', 'max_epochs must be a positive integer, got 2.5'),
    ('resume from weights', 'not a training checkpoint'),
    ('resume from truncated', 'truncated, damaged or not a torch checkpoint'),
])
def test_train_tool_refuses(case, message, files, tmp_path):
    argv = {
        'empty config': [str(files / 'empty.py')],
        'zero epochs': [CONFIG, '--cfg-options', 'train_cfg.max_epochs=0'],
        'fractional epochs': [CONFIG, '--cfg-options', 'train_cfg.max_epochs=2.5'],
        'resume from weights': [CONFIG, '--resume', str(files / 'plain.pth')],
        'resume from truncated': [CONFIG, '--resume', str(files / 'truncated.pth')],
    }[case]
    with pytest.raises(ValueError, match=message):
        train_tool.main([*argv, '--work-dir', str(tmp_path)])
    assert not any(tmp_path.iterdir()), 'a refused run left files behind'


def test_one_line_and_exit_code_from_the_command_line(python_process, files):
    result = python_process(['tools/train.py', CONFIG, '--resume', files / 'plain.pth'])
    assert result.returncode == 2 and result.stderr.strip().count('\n') == 0, result.stderr[-2000:]
    assert result.stderr.startswith('error: --resume') and 'load_from=' in result.stderr
