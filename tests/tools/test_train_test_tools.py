"""tools/train.py and tools/test.py end to end: exact resume, 2-process training, test reproduces val."""
import re
import socket

import pytest
import torch

from sparsevision.utils import load_state_dict

pytestmark = pytest.mark.slow

CONFIG = 'configs/resnet/resnet18_w16_digits.py'
# A small, fast version of the ResNet digits config: depth 10, 8 channels, 256 training images.
SMALL = ['model.backbone.depth=10', 'model.backbone.base_channels=8', 'model.head.in_channels=64',
         'train_dataloader.dataset.indices=256', 'default_hooks.logger.interval=2',
         'default_hooks.checkpoint.max_keep_ckpts=-1']


def _train(python_process, work_dir, epochs, *extra):
    result = python_process(['tools/train.py', CONFIG, '--work-dir', work_dir, *extra,
                             '--cfg-options', f'train_cfg.max_epochs={epochs}', *SMALL])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _weights(path):
    return load_state_dict(path)


def test_resume_gives_identical_weights(python_process, tmp_path):
    _train(python_process, tmp_path / 'straight', 2)
    _train(python_process, tmp_path / 'resumed', 1)
    _train(python_process, tmp_path / 'resumed', 2, '--resume')
    straight, resumed = _weights(tmp_path / 'straight/epoch_2.pth'), _weights(tmp_path / 'resumed/epoch_2.pth')
    assert straight.keys() == resumed.keys()
    differing = [key for key in straight if not torch.equal(straight[key], resumed[key])]
    assert not differing, f'resumed run differs in {differing[:5]}'
    initial = _weights(tmp_path / 'resumed/epoch_1.pth')
    assert any(not torch.equal(initial[key], straight[key]) for key in straight), 'epoch 2 changed nothing'


def test_test_tool_reproduces_validation_accuracy(python_process, tmp_path):
    trained = _train(python_process, tmp_path, 1)
    logged = re.findall(r'Epoch\(val\) \[1\].*?accuracy/top1: ([\d.]+)', trained.stdout + trained.stderr)
    result = python_process(['tools/test.py', CONFIG, tmp_path / 'epoch_1.pth', '--work-dir', tmp_path / 'test',
                             '--cfg-options', *SMALL])
    assert result.returncode == 0, result.stderr[-3000:]
    tested = re.search(r'accuracy/top1: ([\d.]+)\s*$', result.stdout.strip())
    assert logged and tested and float(tested.group(1)) == pytest.approx(float(logged[-1]), abs=0.01)


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_two_process_training_keeps_replicas_identical(python_process, tmp_path):
    result = python_process(['-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', _free_port(),
                             'tools/train.py', CONFIG, '--launcher', 'pytorch', '--work-dir', tmp_path,
                             '--cfg-options', 'train_cfg.max_epochs=1', *SMALL], env={'OMP_NUM_THREADS': '1'})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert 'replicas identical on 2 process(es)' in output
    assert 'Distributed launcher: pytorch' in output or 'distributed: True' in output
    assert (tmp_path / 'epoch_1.pth').is_file()


def test_amp_without_gpu_is_a_clear_error(python_process, tmp_path):
    if torch.cuda.is_available():
        pytest.skip('a GPU is present')
    result = python_process(['tools/train.py', CONFIG, '--amp', '--work-dir', tmp_path])
    assert result.returncode != 0 and '--amp needs a CUDA device' in result.stderr


def test_missing_checkpoint_is_a_clear_error(python_process, tmp_path):
    result = python_process(['tools/test.py', CONFIG, tmp_path / 'nope.pth'])
    assert result.returncode != 0 and 'does not exist' in result.stderr
