"""Per-layer firing statistics of the spiking neurons in a model, recorded with forward hooks."""
from typing import Dict

import torch
from torch import nn

from .hooks import LayerHooks
from .neurons import SpikingNeuron


class FiringMonitor(LayerHooks):
    """Context manager recording how much every :class:`SpikingNeuron` in a model fires.

    Per named neuron layer, over every forward call made inside the context
    (weighted by element count, so calls of different sizes combine exactly):

    - ``firing_rate``: share of non-zero outputs;
    - ``mean_spikes``: mean output value (equal to ``firing_rate`` for binary neurons);
    - ``active_site_ratio``: for multi-step outputs ``[T, N, C]`` (sparse site features),
      the share of ``(t, n)`` with any non-zero channel.

    These rates feed the usual SNN energy estimate, ``SOPs = rate x T x FLOPs``
    (Yao et al., "Spike-driven Transformer", NeurIPS 2023). Statistics keep
    accumulating if the context is entered again.

    Example::

        with FiringMonitor(model) as monitor:
            model(x)
        monitor.summary()  # {'stem.neuron': {'firing_rate': 0.12, 'mean_spikes': 0.12}, ...}

    Args:
        model: a module containing spiking neurons (or a neuron itself).
    """

    def __init__(self, model: nn.Module):
        super().__init__(model, (SpikingNeuron,), 'SpikingNeuron to monitor')

    @torch.no_grad()
    def record(self, name: str, module: SpikingNeuron, args: tuple, kwargs: dict, spikes: torch.Tensor) -> None:
        """Forward hook: add one call's counts to ``name``'s totals (kept on the device, no sync)."""
        counts = {
            'elements': spikes.new_tensor(spikes.numel(), dtype=torch.float64),
            'non_zero': torch.count_nonzero(spikes).to(torch.float64),
            'spikes': spikes.sum(dtype=torch.float64),
        }
        if module.step_mode == 'm' and spikes.dim() == 3:
            counts['sites'] = counts['elements'].new_tensor(spikes.shape[0] * spikes.shape[1])
            counts['active_sites'] = (spikes != 0).any(dim=-1).sum().to(torch.float64)
        totals = self.totals.setdefault(name, {})
        for key, count in counts.items():
            totals[key] = totals[key] + count if key in totals else count

    def summary(self) -> Dict[str, Dict[str, float]]:
        """``{layer name: {statistic: value}}`` for every neuron layer that ran inside the context."""
        summary = {}
        for name, totals in self.totals.items():
            elements = totals['elements'].clamp(min=1)
            layer = {'firing_rate': (totals['non_zero'] / elements).item(),
                     'mean_spikes': (totals['spikes'] / elements).item()}
            if 'sites' in totals:
                layer['active_site_ratio'] = (totals['active_sites'] / totals['sites'].clamp(min=1)).item()
            summary[name] = layer
        return summary
