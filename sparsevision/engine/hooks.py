"""Training hooks: exact resume, replica checks and checkpoint fit."""
import hashlib

import numpy as np
import torch
import torch.distributed as dist
from mmengine.dist import get_rank, get_world_size, is_distributed
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import set_random_seed

from ..registry import HOOKS
from ..utils.checkpoint import check_state_dict_fits, weights_in


@HOOKS.register_module()
class ReseedPerEpochHook(Hook):
    """Seed python, numpy and torch from ``(seed, epoch, rank)`` at the start of every epoch.

    Augmentation and dropout then depend only on the epoch, not on how the run
    got there, so ``1 epoch + resume 1 epoch`` trains exactly like 2 epochs
    straight (mmengine restores weights, optimizer and schedulers but not RNG
    streams, and validation consumes random numbers in between).
    """

    priority = 'VERY_HIGH'

    def before_train_epoch(self, runner) -> None:
        seed = 0 if runner.seed is None else runner.seed
        set_random_seed(seed + 1_000_003 * (runner.epoch + 1) + 7919 * get_rank())


@HOOKS.register_module()
class DistributedConsistencyHook(Hook):
    """Check, after training, that every process holds bit-identical parameters and buffers.

    Replicas that drifted apart (BatchNorm statistics never synchronised, a
    rank-dependent branch) silently train different models; this raises,
    naming the tensors that differ. Pair it with ``SyncBuffersHook`` (or
    SyncBatchNorm) in models with BatchNorm.
    """

    priority = 'LOWEST'

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        digests = tensor_digests(model)
        every_rank = [digests]
        if is_distributed():
            every_rank = [None] * get_world_size()
            dist.all_gather_object(every_rank, digests)
        differing = [name for name in digests if len({rank[name] for rank in every_rank}) > 1]
        if differing:
            raise RuntimeError(f'model replicas differ after training in {len(differing)} tensor(s): '
                               f'{differing[:8]}')
        total = hashlib.sha256(''.join(digests.values()).encode()).hexdigest()
        runner.logger.info(f'replicas identical on {len(every_rank)} process(es): state digest {total}')


def tensor_digests(model: torch.nn.Module) -> dict:
    """SHA-256 of every parameter and buffer, by state_dict name."""
    return {name: hashlib.sha256(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes()).hexdigest()
            for name, tensor in model.state_dict().items()}


@HOOKS.register_module()
class KeepRateScheduleHook(Hook):
    """Warm a token router's ``keep_rate`` up from 1 to its configured value (EViT's schedule).

    The rate follows a cosine from 1 at ``start_epoch`` to the router's own ``keep_rate`` at
    ``end_epoch`` (per iteration) and stays there; it depends only on the iteration, so resumed runs match.

    Args:
        start_epoch, end_epoch: the warm-up interval in epochs.
    """

    def __init__(self, start_epoch: int = 0, end_epoch: int = 5):
        if not 0 <= start_epoch < end_epoch:
            raise ValueError(f'KeepRateScheduleHook needs 0 <= start_epoch < end_epoch, got {start_epoch}, {end_epoch}')
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        self.target = None

    @staticmethod
    def _router(runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        router = getattr(getattr(model, 'backbone', model), 'router', None)
        if router is None or not hasattr(router, 'keep_rate'):
            raise ValueError('KeepRateScheduleHook needs a token-pruning backbone whose router has a keep_rate')
        return router

    def before_train(self, runner) -> None:
        self.target = self._router(runner).keep_rate

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        iterations_per_epoch = len(runner.train_dataloader)
        progress = (runner.iter / iterations_per_epoch - self.start_epoch) / (self.end_epoch - self.start_epoch)
        progress = min(max(progress, 0.0), 1.0)
        self._router(runner).keep_rate = self.target + (1 - self.target) * 0.5 * (1 + np.cos(np.pi * progress))

    def after_train(self, runner) -> None:
        self._router(runner).keep_rate = self.target


@HOOKS.register_module()
class CheckpointFitsModelHook(Hook):
    """Refuse a loaded checkpoint whose weights are not exactly the model's (``tools/test.py`` adds it).

    mmengine loads non-strictly: another model's checkpoint leaves a randomly initialised model that is then
    evaluated. This raises instead, naming the missing, unexpected and mismatched keys.

    Args:
        checkpoint_name: how the checkpoint is named in the error.
    """

    def __init__(self, checkpoint_name: str = 'loaded'):
        self.checkpoint_name = checkpoint_name

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        try:
            check_state_dict_fits(model, weights_in(checkpoint, self.checkpoint_name), self.checkpoint_name)
        except ValueError as error:
            raise ValueError(f'{error} (--cfg-options strict_checkpoint=False loads what fits)') from None
