"""Small shared utilities: checkpoint I/O."""
from .checkpoint import check_state_dict_fits, load_checkpoint, load_state_dict
from .plain_checkpoint import load_plain_checkpoint

__all__ = ['check_state_dict_fits', 'load_checkpoint', 'load_plain_checkpoint', 'load_state_dict']
