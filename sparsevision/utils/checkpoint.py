"""Model weights from checkpoint files read as plain data (never a silent unsafe fallback)."""
from pathlib import Path
from typing import Dict, Union

import torch

from .plain_checkpoint import load_plain_checkpoint

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / 'model_zoo' / 'weights'
ZOO_PREFIX = 'zoo:'


def resolve_checkpoint_path(path: Union[str, Path]) -> Path:
    """``'zoo:NAME'`` -> the shipped weights of zoo model ``NAME`` (works from any directory); else ``path``."""
    if isinstance(path, str) and path.startswith(ZOO_PREFIX):
        weights = SHIPPED_WEIGHTS / f'{path[len(ZOO_PREFIX):]}.pth'
        if not weights.is_file():
            raise FileNotFoundError(f'no shipped weights {path!r}; the zoo ships: '
                                    f'{", ".join(ZOO_PREFIX + p.stem for p in sorted(SHIPPED_WEIGHTS.glob("*.pth")))}')
        return weights
    return Path(path)


def load_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read the model weights of a plain state_dict or an mmengine checkpoint (``'zoo:NAME'``: shipped weights).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is not a loadable, trusted-format checkpoint.
    """
    path = resolve_checkpoint_path(path)
    return weights_in(load_plain_checkpoint(path), str(path))


def weights_in(checkpoint, source: str) -> Dict[str, torch.Tensor]:
    """The weights of a loaded checkpoint: its ``state_dict`` (or itself, a plain one), ``module.`` prefixes dropped.

    Raises:
        ValueError: when it holds no state_dict of tensors.
    """
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f'checkpoint {source} holds no state_dict of tensors')
    return {key.removeprefix('module.'): value for key, value in state_dict.items()}


def check_state_dict_fits(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Raise unless ``state_dict`` has exactly ``model``'s keys and shapes.

    Raises:
        ValueError: naming the first missing, unexpected and mismatched keys.
    """
    expected = model.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    mismatched = sorted(key for key in expected.keys() & state_dict.keys()
                        if expected[key].shape != state_dict[key].shape)
    if missing or unexpected or mismatched:
        details = '; '.join(f'{label}: {keys[:5]}{" ..." if len(keys) > 5 else ""}'
                            for label, keys in (('missing', missing), ('unexpected', unexpected),
                                                ('shape mismatch', mismatched)) if keys)
        raise ValueError(f'checkpoint {source} does not fit {type(model).__name__} (is it for another model?): '
                         f'{details}')


def load_checkpoint(model: torch.nn.Module, path: Union[str, Path]) -> torch.nn.Module:
    """Load ``path`` into ``model``, refusing checkpoints of another architecture.

    Raises:
        ValueError: when keys or shapes do not match the model, naming the first differences.
    """
    state_dict = load_state_dict(path)
    check_state_dict_fits(model, state_dict, str(path))
    model.load_state_dict(state_dict)
    return model
