"""The model zoo: every config under ``configs/`` is a model name.

``list_models()`` names them, ``create_model()`` builds one (optionally with
weights), ``config_path()`` finds its file. Shipped checkpoints of trained zoo
models live in ``sparsevision/model_zoo/weights/<name>.pth``.
"""
import fnmatch
import os
from pathlib import Path
from typing import List, Optional, Union

from mmengine.config import Config

from ..utils.checkpoint import SHIPPED_WEIGHTS as WEIGHTS_DIR

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def configs_dir() -> Path:
    """``$SPARSEVISION_CONFIGS``, else the checkout's ``configs/`` (editable install), else the packaged copy.

    A ``configs/`` beside the package counts only in a sparsevision checkout (next to its ``setup.py``), so an
    unrelated top-level ``configs/`` in site-packages cannot replace the zoo.
    """
    checkout = PACKAGE_DIR.parent
    candidates = [os.environ.get('SPARSEVISION_CONFIGS'),
                  checkout / 'configs' if (checkout / 'setup.py').is_file() else None,
                  PACKAGE_DIR / '.mim' / 'configs']
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError('no sparsevision configs found; set SPARSEVISION_CONFIGS to the configs/ folder')


def _config_files() -> dict:
    root = configs_dir()
    return {path.stem: path for path in sorted(root.glob('*/*.py')) if path.parent.name != '_base_'}


def list_models(pattern: str = '*') -> List[str]:
    """Names of the zoo's models (config file stems) matching a shell-style ``pattern``."""
    return [name for name in _config_files() if fnmatch.fnmatch(name, pattern)]


def pretrained_weights(name: str) -> Optional[Path]:
    """The shipped checkpoint of a zoo model, or None when it has none."""
    path = WEIGHTS_DIR / f'{name}.pth'
    return path if path.is_file() else None


def config_path(name: str) -> Path:
    """The config file of a zoo model name.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    files = _config_files()
    if name not in files:
        raise ValueError(f'unknown sparsevision model {name!r}; known models: {", ".join(files)}')
    return files[name]


def load_config(name_or_config: Union[str, Path, Config]) -> Config:
    """A :class:`Config` from a zoo name, a config file path or a Config."""
    if isinstance(name_or_config, Config):
        return name_or_config
    path = Path(name_or_config)
    if path.is_dir():
        raise ValueError(f'config {path} is a directory; give a config .py file or a zoo model name')
    if path.suffix == '.py':
        if not path.is_file():
            raise FileNotFoundError(f'config file {path} does not exist')
        return Config.fromfile(path)
    if path.is_file():
        raise ValueError(f'config {path} is not a .py config file; give a config .py file or a zoo model name')
    return Config.fromfile(config_path(str(name_or_config)))


def create_model(name_or_config: Union[str, Path, Config], checkpoint: Optional[Union[str, Path]] = None,
                 **overrides):
    """Build a zoo model.

    Args:
        name_or_config: a name from :func:`list_models`, a config file or a Config.
        checkpoint: weights to load: a file (plain state_dict or mmengine
            checkpoint, read with ``weights_only=True``) or ``'zoo'`` for the
            model's shipped weights.
        **overrides: values replacing the config's ``model`` entries; dotted
            keys reach nested ones, e.g. ``**{'backbone.depth': 34}``.

    Returns:
        The model (an ``mmengine.model.BaseModel``), in eval mode when weights were loaded.

    Raises:
        ValueError: unknown name, no shipped weights, or a checkpoint of another architecture.
    """
    from mmengine.registry import DefaultScope

    from ..registry import MODELS
    from ..utils import load_checkpoint

    cfg = load_config(name_or_config)
    if overrides:
        cfg.merge_from_dict({f'model.{key}': value for key, value in overrides.items()})
    with DefaultScope.overwrite_default_scope('sparsevision'):
        model = MODELS.build(cfg.model)
    if checkpoint == 'zoo':
        name = Path(cfg.filename).stem if cfg.filename else str(name_or_config)
        checkpoint = pretrained_weights(name)
        if checkpoint is None:
            raise ValueError(f'{name!r} ships no trained weights; those that do: '
                             f'{", ".join(p.stem for p in sorted(WEIGHTS_DIR.glob("*.pth")))}')
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
        model.eval()
    return model
