"""Training hooks: exact resume and replica checks."""
import hashlib

import numpy as np
import torch
import torch.distributed as dist
from mmengine.dist import get_rank, get_world_size, is_distributed
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import set_random_seed

from ..registry import HOOKS


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

    Each process hashes its model state; rank 0 logs the verdict and any
    disagreement raises, because replicas that drifted apart (an unsynchronised
    buffer, a rank-dependent branch) silently train different models.
    """

    priority = 'LOWEST'

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        digest = model_state_digest(model)
        digests = [digest]
        if is_distributed():
            digests = [None] * get_world_size()
            dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f'model replicas differ after training: state digests per rank {digests}')
        runner.logger.info(f'replicas identical on {len(digests)} process(es): state digest {digest}')


def model_state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in state_dict order."""
    sha = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        sha.update(name.encode())
        sha.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return sha.hexdigest()
