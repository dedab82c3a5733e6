"""Crafted checkpoints run no code through any entry point; real Runner checkpoints still load and resume.

Each crafted file would run ``open(MARKER, 'w')`` if any step trusted it: while unpickling (a classic ``__reduce__``),
or later, when mmengine deep-copies or pickles what was loaded (``getattr`` gadgets planted as ``__reduce_ex__`` on a
HistoryBuffer or an OrderedDict), or when mmengine's resume parses ``meta['config']`` as a Python config.
"""
import collections
import copy
import copyreg
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from sparsevision.model_zoo import create_model
from sparsevision.utils import load_plain_checkpoint, load_state_dict

CONFIG = 'configs/resnet/resnet18_w16_digits.py'
SMALL = ['model.backbone.depth=10', 'model.backbone.base_channels=8', 'model.head.in_channels=64',
         'train_dataloader.dataset.indices=64', 'val_dataloader.dataset.indices=64',
         'test_dataloader.dataset.indices=64', 'default_hooks.checkpoint.max_keep_ckpts=-1']


class Call:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Instance:
    """Pickles as a ``cls`` instance whose ``__dict__`` (or ``__setstate__``) receives ``state``."""

    def __init__(self, cls, state):
        self.cls, self.state = cls, state

    @property
    def __class__(self):  # pickle checks that __newobj__'s class is the object's
        return self.cls

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (self.cls,), self.state


def _code(marker):
    return f'open({str(marker)!r}, "w").write("code from a checkpoint ran")'


def _eval_gadget(marker):
    """``__reduce_ex__`` that evaluates code: ``{4: (eval, (code,))}.get``, with eval reached via getattr alone."""
    builtins_module = Call(getattr, getattr, '__self__')
    evaluate = Call(getattr, builtins_module, 'eval')
    return Call(getattr, {4: (evaluate, (_code(marker),))}, 'get')


def _planted_history_buffer(marker):
    return Instance(HistoryBuffer, {'max_length': 10, '_log_history': np.zeros(1), '_count_history': np.ones(1),
                                    '__reduce_ex__': _eval_gadget(marker)})


def _crafted(kind, marker, base=None):
    """A checkpoint dict (or a real one, ``base``, with the crafted part planted)."""
    checkpoint = copy.deepcopy(base) if base is not None else {
        'meta': {'epoch': 1, 'iter': 1}, 'state_dict': {'weight': torch.zeros(2)},
        'message_hub': {'log_scalars': {}, 'runtime_info': {}, 'resumed_keys': {}}}
    if kind == 'classic_reduce':
        checkpoint['state_dict']['weight'] = Call(eval, _code(marker))
    elif kind == 'history_buffer_gadget':
        checkpoint['message_hub']['log_scalars']['train/loss'] = _planted_history_buffer(marker)
        checkpoint['message_hub']['resumed_keys']['train/loss'] = True
    elif kind == 'ordered_dict_gadget_in_meta':
        checkpoint['meta']['dataset_meta'] = Instance(collections.OrderedDict, {'__reduce_ex__': _eval_gadget(marker)})
    elif kind == 'gadget_in_state_dict':
        checkpoint['state_dict']['extra'] = {'nested': [_planted_history_buffer(marker)]}
    elif kind == 'statistics_method_gadget':
        buffer = {'max_length': 10, '_log_history': np.zeros(1), '_count_history': np.ones(1),
                  'statistics_methods': {'mean': Call(getattr, getattr, '__self__')}}
        checkpoint['message_hub']['log_scalars']['train/loss'] = Instance(HistoryBuffer, buffer)
    else:
        raise AssertionError(kind)
    return checkpoint


CRAFTED = ['classic_reduce', 'history_buffer_gadget', 'ordered_dict_gadget_in_meta', 'gadget_in_state_dict',
           'statistics_method_gadget']


def _save(checkpoint, path):
    torch.save(checkpoint, path)
    return path


def _safe_globals():
    return {str(item) for item in torch.serialization.get_safe_globals()}


@pytest.mark.parametrize('kind', CRAFTED)
def test_crafted_checkpoints_are_refused_in_process(kind, tmp_path):
    marker = tmp_path / 'ran'
    path = _save(_crafted(kind, marker), tmp_path / 'crafted.pth')
    create_model('resnet18_w16_digits')  # imports whatever adds its own safe globals (timm, torch.distributed)
    before = _safe_globals()
    for load in (load_plain_checkpoint, load_state_dict, lambda p: create_model('resnet18_w16_digits', checkpoint=p)):
        with pytest.raises(ValueError, match='plain data|not plain'):
            load(path)
    assert not marker.exists()
    assert _safe_globals() == before, "a load widened torch's process-wide allow-list"
    allowed = {getattr(item, '__name__', '') for item in torch.serialization.get_safe_globals()}
    assert not {'getattr', 'HistoryBuffer'} & allowed
    with pytest.raises(pickle.UnpicklingError):  # and torch's own weights_only loads stay strict afterwards
        torch.load(path, weights_only=True)
    assert not marker.exists()


def test_real_runner_checkpoint_matches_a_trusted_load(tmp_path):
    """What mmengine pickles (HistoryBuffers with getattr-named statistics methods, numpy scalars) loads exactly."""
    buffer = HistoryBuffer([0.5, 0.25], [1, 2], max_length=5)
    checkpoint = {'meta': {'epoch': 2, 'iter': 8, 'seed': np.int64(3), 'dataset_meta': {'classes': ('a', 'b')}},
                  'state_dict': collections.OrderedDict(weight=torch.randn(3, 2)),
                  'message_hub': {'log_scalars': {'train/loss': buffer}, 'runtime_info': {'epoch': 2},
                                  'resumed_keys': {'train/loss': True, 'epoch': True}},
                  'param_schedulers': [{'last_step': 8, 'base_values': [0.1], 'by_epoch': True}]}
    checkpoint['state_dict']._metadata = collections.OrderedDict({'': {'version': 1}})
    path = _save(checkpoint, tmp_path / 'real.pth')
    loaded = load_plain_checkpoint(path)
    trusted = torch.load(path, weights_only=False)
    restored = loaded['message_hub']['log_scalars']['train/loss']
    assert type(restored) is HistoryBuffer and restored.max_length == 5
    assert np.array_equal(restored._log_history, buffer._log_history)
    assert restored._log_history.dtype == buffer._log_history.dtype and restored.mean() == buffer.mean()
    assert copy.deepcopy(restored).current() == 0.25  # what mmengine does with it on resume and at the next save
    assert torch.equal(loaded['state_dict']['weight'], trusted['state_dict']['weight'])
    assert loaded['state_dict']._metadata == trusted['state_dict']._metadata
    assert loaded['meta'] == trusted['meta'] and loaded['param_schedulers'] == trusted['param_schedulers']


def test_executable_meta_config_is_dropped(tmp_path):
    checkpoint = {'meta': {'epoch': 1, 'iter': 1, 'config': _code(tmp_path / 'ran')}, 'state_dict': {}}
    path = _save(checkpoint, tmp_path / 'c.pth')
    assert 'config' not in load_plain_checkpoint(path)['meta']


@pytest.mark.parametrize('planted', [[], 'cycle'])
def test_cycles_and_depth_are_refused(planted, tmp_path):
    nested = []
    if planted == 'cycle':
        nested.append(nested)
    else:
        for _ in range(200):
            nested = [nested]
    with pytest.raises(ValueError, match='contains itself|levels deep'):
        load_plain_checkpoint(_save({'state_dict': {}, 'meta': nested}, tmp_path / 'c.pth'))


def _one_line_error(result, marker):
    assert result.returncode != 0, result.stdout[-2000:]
    assert not marker.exists(), 'code from the checkpoint ran'
    lines = result.stderr.strip().splitlines()
    assert lines and 'error: ' in lines[-1] and 'Traceback' not in result.stderr, result.stderr[-3000:]
    return lines[-1]


def _train(python_process, work_dir, epochs, *extra):
    return python_process(['tools/train.py', CONFIG, '--work-dir', work_dir, *extra,
                           '--cfg-options', f'train_cfg.max_epochs={epochs}', *SMALL])


@pytest.fixture(scope='module')
def trained(tmp_path_factory, python_process):
    """A small real run: ``epoch_1.pth`` written by tools/train.py."""
    work_dir = tmp_path_factory.mktemp('trained')
    result = _train(python_process, work_dir, 1)
    assert result.returncode == 0, result.stderr[-3000:]
    return work_dir / 'epoch_1.pth'


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['history_buffer_gadget', 'ordered_dict_gadget_in_meta', 'classic_reduce'])
def test_crafted_resume_runs_nothing(kind, trained, python_process, tmp_path):
    marker = tmp_path / 'ran'
    real = torch.load(trained, weights_only=False)
    crafted = _save(_crafted(kind, marker, base=real), tmp_path / 'crafted.pth')
    line = _one_line_error(_train(python_process, tmp_path / 'run', 2, '--resume', crafted), marker)
    assert 'plain data' in line


@pytest.mark.slow
def test_resume_with_executable_meta_config_trains_on_inert(trained, python_process, tmp_path):
    marker = tmp_path / 'ran'
    real = torch.load(trained, weights_only=False)
    real['meta']['config'] = _code(marker)
    crafted = _save(real, tmp_path / 'crafted.pth')
    result = _train(python_process, tmp_path / 'run', 2, '--resume', crafted)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / 'run' / 'epoch_2.pth').is_file() and not marker.exists()
    assert "ignored meta['config']" in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize('tool', ['test', 'publish', 'demo'])
def test_crafted_checkpoints_through_the_other_tools(tool, python_process, tmp_path):
    marker = tmp_path / 'ran'
    crafted = _save(_crafted('history_buffer_gadget', marker), tmp_path / 'crafted.pth')
    command = {'test': ['tools/test.py', CONFIG, crafted, '--work-dir', tmp_path / 'work', '--cfg-options', *SMALL],
               'publish': ['tools/publish_model.py', crafted, tmp_path / 'published.pth'],
               'demo': ['demo/image_demo.py', '--checkpoint', crafted, '--out-dir', tmp_path / 'demo']}[tool]
    assert 'plain data' in _one_line_error(python_process(command), marker)
    assert not (tmp_path / 'published.pth').exists()
