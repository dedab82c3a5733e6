"""Safe checkpoint loading (``weights_only=True``; never a silent unsafe fallback)."""
from pathlib import Path
from typing import Dict, Union

import torch

from .compat import register_checkpoint_safe_globals

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / 'model_zoo' / 'weights'
ZOO_PREFIX = 'zoo:'


def resolve_checkpoint_path(path: Union[str, Path]) -> Path:
    """``'zoo:NAME'`` -> the shipped weights of zoo model ``NAME`` (works from any directory); else ``path``."""
    if isinstance(path, str) and path.startswith(ZOO_PREFIX):
        return SHIPPED_WEIGHTS / f'{path[len(ZOO_PREFIX):]}.pth'
    return Path(path)


def load_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read the model weights of a plain state_dict or an mmengine checkpoint (``'zoo:NAME'``: shipped weights).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is not a loadable, trusted-format checkpoint.
    """
    path = resolve_checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    register_checkpoint_safe_globals()
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... here
        raise ValueError(f'cannot load checkpoint {path} with weights_only=True ({type(error).__name__}: '
                         f'{str(error).splitlines()[0]}). If you trust the file, load it with '
                         'torch.load(weights_only=False) and save its state_dict.') from error
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f'checkpoint {path} holds no state_dict of tensors')
    return {key.removeprefix('module.'): value for key, value in state_dict.items()}


def load_checkpoint(model: torch.nn.Module, path: Union[str, Path]) -> torch.nn.Module:
    """Load ``path`` into ``model``, refusing checkpoints of another architecture.

    Raises:
        ValueError: when keys or shapes do not match the model, naming the first differences.
    """
    state_dict = load_state_dict(path)
    expected = model.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    mismatched = sorted(key for key in expected.keys() & state_dict.keys()
                        if expected[key].shape != state_dict[key].shape)
    if missing or unexpected or mismatched:
        details = '; '.join(f'{label}: {keys[:5]}{" ..." if len(keys) > 5 else ""}'
                            for label, keys in (('missing', missing), ('unexpected', unexpected),
                                                ('shape mismatch', mismatched)) if keys)
        raise ValueError(f'checkpoint {path} does not fit {type(model).__name__} (is it for another model?): '
                         f'{details}')
    model.load_state_dict(state_dict)
    return model
