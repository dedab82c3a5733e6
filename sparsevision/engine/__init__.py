"""mmengine extensions: hooks and the launcher set-up shared by tools/train.py and tools/test.py."""
from .hooks import DistributedConsistencyHook, ReseedPerEpochHook
from .launch import build_runner

__all__ = ['DistributedConsistencyHook', 'ReseedPerEpochHook', 'build_runner']
