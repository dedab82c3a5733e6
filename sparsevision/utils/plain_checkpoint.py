"""Checkpoint files read as plain data: nothing in a file runs code, neither while loading nor later.

``torch.load(weights_only=True)`` runs here with a scoped allow-list (``torch.serialization.safe_globals``; the
process-wide list is never widened) holding only numpy's array and scalar constructors and two inert stand-ins:

* mmengine's ``HistoryBuffer`` (the message hub's logged scalars) becomes a record of its pickled state, and
* ``builtins.getattr`` (how a HistoryBuffer pickles its statistics methods) becomes a record of the attribute's name:
  the attribute is never looked up.

The loaded object is then walked: containers, tensors, numbers, strings and non-object numpy arrays pass; a
HistoryBuffer record is checked against the fields mmengine writes and rebuilt with ``HistoryBuffer(...)``; anything
else (an attribute record outside a HistoryBuffer, instance attributes planted on a container or a tensor, object
arrays, cycles) is refused with a ``ValueError``. What comes back is exactly what a trusted ``torch.load`` of a
Runner checkpoint gives, so resuming stays bit-exact.
"""
import collections
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

HISTORY_BUFFER_PATH = 'mmengine.logging.history_buffer.HistoryBuffer'
HISTORY_BUFFER_FIELDS = {'max_length', '_log_history', '_count_history'}
DEFAULT_STATISTICS = {'min', 'max', 'current', 'mean'}  # registered by every HistoryBuffer()
PLAIN_LEAVES = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size)
PLAIN_SEQUENCES = (list, tuple, set, frozenset)
PLAIN_MAPPINGS = (dict, collections.OrderedDict, collections.Counter)
MAX_NESTING = 64  # container levels; Runner checkpoints have fewer than 10
NOT_PLAIN = ('sparsevision loads only plain data (tensors, numbers, strings, containers, numpy arrays); '
             'the file may be crafted to run code')


class HistoryBufferRecord:
    """The pickled state of an mmengine ``HistoryBuffer``, kept as data until it is checked and rebuilt."""
    __slots__ = ('state',)

    def __setstate__(self, state):
        if hasattr(self, 'state'):
            raise ValueError('a HistoryBuffer is given its state twice')
        self.state = state


class AttributeRecord:
    """``getattr(owner, name)`` as a pickle names it, never evaluated."""
    __slots__ = ('owner', 'name')

    def __init__(self, owner, name):
        self.owner, self.name = owner, name


def _numpy_globals() -> list:
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    dtype_classes = {type(np.dtype(code)) for code in '?bhilqBHILQefdgFDG'}
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


def _plain_data_globals() -> list:
    return [*_numpy_globals(), slice, (HistoryBufferRecord, HISTORY_BUFFER_PATH),
            (AttributeRecord, 'builtins.getattr'), (AttributeRecord, '__builtin__.getattr')]


def load_plain_checkpoint(path: Union[str, Path], map_location='cpu') -> Any:
    """Read a checkpoint (plain state_dict or mmengine Runner checkpoint) as plain data.

    Args:
        path: the file.
        map_location: as for ``torch.load``.

    Returns:
        The checkpoint, with mmengine ``HistoryBuffer`` objects rebuilt from their checked contents.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is not a checkpoint, is truncated, or holds anything but plain data.
    """
    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} ' + ('is a directory, not a file' if path.is_dir() else
                                                         'does not exist'))
    try:
        with torch.serialization.safe_globals(_plain_data_globals()):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, OSError, EOFError, ... here
        raise _load_error(path, error) from error
    try:
        checkpoint = _rebuilt(checkpoint, 'checkpoint', [])
    except ValueError as error:
        raise ValueError(f'checkpoint {path} refused: {error}; {NOT_PLAIN}') from error
    return _without_executable_config(checkpoint, path)


def _load_error(path: Path, error: Exception) -> ValueError:
    """A one-line reason for a failed ``torch.load``: a refused object, or a damaged file."""
    refusal = str(error).partition('WeightsUnpickler error:')[2].strip().split('. Please use')[0].split('\n')[0]
    if isinstance(error, pickle.UnpicklingError) and refusal:
        reason = re.sub(r'Unsupported global: GLOBAL (\S+) was not an allowed global by default',
                        r'it names \1, which is not allowed', refusal)
        return ValueError(f'cannot load checkpoint {path}: {reason}; {NOT_PLAIN}. If you trust the file, load it '
                          'with torch.load(weights_only=False) and save its state_dict.')
    detail = (str(error).strip().splitlines() or [''])[0][:200]
    return ValueError(f'cannot load checkpoint {path}: it is truncated, damaged or not a torch checkpoint '
                      f'({type(error).__name__}: {detail})')


def _without_executable_config(checkpoint: Any, path: Path) -> Any:
    """Drop ``meta['config']``: mmengine's resume would execute that string as a Python config."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if isinstance(meta, dict) and 'config' in meta:
        del meta['config']
        logging.getLogger('sparsevision').warning(
            f"ignored meta['config'] of checkpoint {path} (mmengine would run it as Python code)")
    return checkpoint


def _rebuilt(value: Any, where: str, active: list) -> Any:
    """``value`` checked to be plain data, HistoryBuffer records rebuilt; ``where`` names it in errors.

    ``active`` holds the ids of the containers being walked (to refuse cycles and deep nesting).
    """
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter) or vars(value):
            raise ValueError(f'{where} is a tensor carrying Python attributes or of type {type(value).__name__}')
        return value
    if type(value) in PLAIN_LEAVES:
        return value
    if isinstance(value, (np.ndarray, np.generic, np.dtype)):
        dtype = value if isinstance(value, np.dtype) else value.dtype
        if dtype.hasobject:
            raise ValueError(f'{where} is a numpy object array')
        return value
    if type(value) is slice:
        return slice(*(_rebuilt(part, where, active) for part in (value.start, value.stop, value.step)))
    if type(value) is HistoryBufferRecord:
        return _history_buffer(value, where)
    if type(value) is AttributeRecord:
        raise ValueError(f'{where} is a getattr({value.name!r}) call outside an mmengine HistoryBuffer')
    if type(value) not in PLAIN_MAPPINGS + PLAIN_SEQUENCES:
        raise ValueError(f'{where} is a {type(value).__name__}')
    if id(value) in active:
        raise ValueError(f'{where} contains itself')
    if len(active) == MAX_NESTING:
        raise ValueError(f'{where} is nested more than {MAX_NESTING} levels deep')
    active.append(id(value))
    rebuilt = _rebuilt_container(value, where, active)
    active.pop()
    return rebuilt


def _rebuilt_container(value: Any, where: str, active: list) -> Any:
    attributes = dict(vars(value)) if hasattr(value, '__dict__') else {}
    if set(attributes) - {'_metadata'} or (attributes and type(value) is not collections.OrderedDict):
        raise ValueError(f'{where} is a {type(value).__name__} with attributes {sorted(attributes)}')
    if isinstance(value, dict):
        for key in value:
            _rebuilt(key, f'a key of {where}', active)
        for key, item in value.items():
            value[key] = _rebuilt(item, f'{where}[{key!r}]', active)
        if attributes:
            value._metadata = _rebuilt(attributes['_metadata'], f'{where}._metadata', active)
        return value
    items = [_rebuilt(item, f'{where}[{index}]', active) for index, item in enumerate(value)]
    if type(value) is list:
        value[:] = items
        return value
    return type(value)(items)


def _history_buffer(record: HistoryBufferRecord, where: str):
    """A real ``HistoryBuffer`` from a record whose fields are exactly what mmengine pickles."""
    from mmengine.logging import HistoryBuffer

    state = getattr(record, 'state', None)
    if type(state) is not dict or not HISTORY_BUFFER_FIELDS <= state.keys() <= HISTORY_BUFFER_FIELDS | {
            'statistics_methods'}:
        raise ValueError(f'{where} is a HistoryBuffer with fields '
                         f'{sorted(state) if isinstance(state, dict) else type(state).__name__}, '
                         f'not {sorted(HISTORY_BUFFER_FIELDS)}')
    max_length, logs, counts = state['max_length'], state['_log_history'], state['_count_history']
    if type(max_length) is not int or max_length < 1:
        raise ValueError(f'{where} is a HistoryBuffer with max_length {max_length!r}')
    for name, array in (('_log_history', logs), ('_count_history', counts)):
        if type(array) is not np.ndarray or array.ndim != 1 or array.dtype.kind not in 'biuf':
            raise ValueError(f'{where}.{name} is not a one-dimensional numeric numpy array')
    if len(logs) != len(counts) or len(logs) > max_length:
        raise ValueError(f'{where} holds {len(logs)} logs and {len(counts)} counts for max_length {max_length}')
    _check_statistics_methods(state.get('statistics_methods', {}), where, HistoryBuffer)
    return HistoryBuffer(logs, counts, max_length)


def _check_statistics_methods(methods: Any, where: str, history_buffer_class) -> None:
    """Pickled statistics methods must name ones this process registered (they are not restored from the file)."""
    if type(methods) is not dict:
        raise ValueError(f'{where}.statistics_methods is a {type(methods).__name__}')
    for key, method in methods.items():
        if (type(method) is not AttributeRecord or method.owner is not HistoryBufferRecord or key != method.name
                or key not in DEFAULT_STATISTICS | history_buffer_class._statistics_methods.keys()):
            raise ValueError(f'{where}.statistics_methods[{key!r}] is not a statistics method mmengine registered')
