"""Checkpoints load as plain data and refuse other architectures."""
import collections
import pickle

import pytest
import torch

from sparsevision.utils import load_checkpoint, load_state_dict


def _model():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def test_plain_and_mmengine_and_ddp_checkpoints(tmp_path):
    source = _model()
    plain, wrapped = tmp_path / 'plain.pth', tmp_path / 'runner.pth'
    torch.save(source.state_dict(), plain)
    ddp_state = collections.OrderedDict((f'module.{k}', v) for k, v in source.state_dict().items())
    torch.save(dict(meta=dict(epoch=3), state_dict=ddp_state), wrapped)
    for path in (plain, wrapped):
        target = load_checkpoint(_model(), path)
        assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


class _Payload:
    def __reduce__(self):
        return (print, ('this must never run',))


def test_arbitrary_pickles_are_refused(tmp_path, capsys):
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as handle:
        pickle.dump({'weight': _Payload()}, handle)
    with pytest.raises(ValueError, match='Unsupported operand.*only plain data'):
        load_state_dict(path)
    assert 'this must never run' not in capsys.readouterr().out


def test_other_architecture_is_refused(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save(torch.nn.Linear(3, 5).state_dict(), path)
    with pytest.raises(ValueError, match='does not fit Sequential.*missing'):
        load_checkpoint(_model(), path)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / 'nope.pth')
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'\x00\x01 not a checkpoint')
    with pytest.raises(ValueError, match='cannot load checkpoint'):
        load_state_dict(garbage)
