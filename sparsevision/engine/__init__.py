"""mmengine extensions: hooks and the launcher set-up shared by tools/train.py and tools/test.py."""
from .hooks import CheckpointFitsModelHook, DistributedConsistencyHook, KeepRateScheduleHook, ReseedPerEpochHook
from .launch import (add_common_arguments, build_runner, check_config, check_resumable, config_from_arguments,
                     run_command)

__all__ = ['CheckpointFitsModelHook', 'DistributedConsistencyHook', 'KeepRateScheduleHook', 'ReseedPerEpochHook',
           'add_common_arguments', 'build_runner', 'check_config', 'check_resumable', 'config_from_arguments',
           'run_command']
