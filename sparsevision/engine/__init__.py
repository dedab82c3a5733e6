"""mmengine extensions: hooks and the launcher set-up shared by tools/train.py and tools/test.py."""
from .hooks import DistributedConsistencyHook, KeepRateScheduleHook, ReseedPerEpochHook
from .launch import add_common_arguments, build_runner, config_from_arguments

__all__ = ['DistributedConsistencyHook', 'KeepRateScheduleHook', 'ReseedPerEpochHook', 'add_common_arguments', 'build_runner',
           'config_from_arguments']
