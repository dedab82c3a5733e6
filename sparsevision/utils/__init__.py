"""Small shared utilities: checkpoint I/O and compatibility shims."""
from .checkpoint import load_checkpoint, load_state_dict
from .compat import register_checkpoint_safe_globals

__all__ = ['load_checkpoint', 'load_state_dict', 'register_checkpoint_safe_globals']
