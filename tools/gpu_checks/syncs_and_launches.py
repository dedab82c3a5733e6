"""Step ``syncs_and_launches``: host syncs and kernel launches per call of the headline layer.

The layer is ``SubMConv3d`` k3 64->64 on the street scene, its kernel map built and every path warmed up first.
On CUDA, syncs are counted with ``torch.cuda.set_sync_debug_mode('warn')`` (``'error'`` would stop at the first
one) and launches with ``torch.profiler`` (CUDA kernel events, copies and fills apart). On the CPU a
dispatcher-level count (``sparsevision.utils.host_syncs.HostSyncs``) lists the ops that would sync on a GPU and
counts every dispatched op in place of launches; it sees the ops called from Python, not those inside the
extension's C++ kernels.
"""
import warnings
from collections import Counter
from pathlib import Path

import torch

from sparsevision.utils.host_syncs import HostSyncs

from .context import CheckContext, Outcome
from .scene import scene_details, street_scene

CHANNELS = 64
CALLS = 3


def headline_layer_calls(context: CheckContext):
    """``{'fwd': call, 'fwd+bwd': call}`` of the headline layer on the scene, after two warm-up steps."""
    from sparsevision.sparse import SparseTensor, SubMConv3d

    sites, _ = street_scene(context)
    torch.manual_seed(0)
    layer = SubMConv3d(CHANNELS, CHANNELS, 3, bias=False).to(context.device)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(sites.indices.shape[0], CHANNELS, generator=generator).to(context.device)
    features.requires_grad_()
    tensor = SparseTensor(features, sites.indices.to(context.device), sites.spatial_shape, 1)

    def forward():
        return layer(tensor).features

    def forward_backward():
        (forward().square().sum() / 2).backward()

    for _ in range(2):
        forward_backward()
    return {'fwd': forward, 'fwd+bwd': forward_backward}


def cuda_syncs(call) -> Counter:
    """Host syncs of one call, by the Python line that caused each."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode('default')
    return Counter(f'{Path(warning.filename).name}:{warning.lineno}' for warning in caught
                   if 'synchroniz' in str(warning.message))


def cuda_launches(call) -> dict:
    """Kernels, copies and fills per call (the mean of ``CALLS`` profiled calls) and the commonest kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(CALLS):
            call()
        torch.cuda.synchronize()
    names = [event.name for event in profiler.events() if event.device_type == DeviceType.CUDA]
    copies = [name for name in names if name.startswith(('Memcpy', 'Memset'))]
    kernels = Counter(name for name in names if not name.startswith(('Memcpy', 'Memset')))
    return {'kernels': sum(kernels.values()) / CALLS, 'copies_and_fills': len(copies) / CALLS,
            'commonest_kernels': {name[:80]: count / CALLS for name, count in kernels.most_common(8)}}


def cpu_counts(call) -> dict:
    with HostSyncs() as counter:
        call()
    return {'syncs': len(counter.seen), 'sync_ops': dict(Counter(counter.seen)),
            'dispatched_ops': sum(counter.ops.values()), 'commonest_ops': dict(counter.ops.most_common(8))}


def count_syncs_and_launches(context: CheckContext) -> Outcome:
    calls = headline_layer_calls(context)
    details = {'layer': f'SubMConv3d k3 {CHANNELS}->{CHANNELS}, map cached, after warm-up', **scene_details(context)}
    parts = []
    for passes, call in calls.items():
        if context.on_gpu:
            syncs = cuda_syncs(call)
            launches = cuda_launches(call)
            details[passes] = {'syncs': sum(syncs.values()), 'sync_sites': dict(syncs), **launches}
            parts.append(f'{passes}: {sum(syncs.values())} syncs, {launches["kernels"]:.0f} kernels '
                         f'+ {launches["copies_and_fills"]:.0f} copies/fills')
        else:
            counts = cpu_counts(call)
            details[passes] = counts
            parts.append(f'{passes}: {counts["syncs"]} would-be syncs, {counts["dispatched_ops"]} ops')
    mode = 'device' if context.on_gpu else 'cpu-equivalent'
    return Outcome('per call: ' + '; '.join(parts), details, mode)
