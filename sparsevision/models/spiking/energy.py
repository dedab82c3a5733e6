"""Operation counts and energy estimates of spiking networks and their ANN twins, dense and sparse.

The usual estimate (Yao et al., "Spike-driven Transformer", NeurIPS 2023; Qiu
et al., E-3DSNN, AAAI 2025) charges a multiply-accumulate (MAC) for every
operation of a layer fed with real values (the first layer sees pixels or voxel
features) and an accumulate (AC) for every synaptic operation (SOP) a spike
triggers: ``E = E_MAC x MACs + E_AC x SOPs``. The ANN twin runs the same layers
with dense MACs. Per-operation energies are Horowitz's 45 nm figures (ISSCC 2014),
as in SpikingJelly's ``op_counter``. Compute only: data movement is not counted.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.coordinates import as_integer
from ...sparse.conv import SparseConvolution
from ...sparse.kernel_maps import convolution_map, inverse_convolution_map
from ...sparse.tensor import KernelMap, SparseTensor
from .hooks import LayerHooks

COUNTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, SparseConvolution)


@dataclass(frozen=True)
class EnergyModel:
    """Energy of one operation, in joules.

    Attributes:
        mac_joules: one multiply-accumulate (real-valued input).
        ac_joules: one accumulate (a spike adds a weight).
    """

    mac_joules: float
    ac_joules: float

    def __post_init__(self):
        if not (self.mac_joules >= 0 and self.ac_joules >= 0):
            raise ValueError(f'operation energies must be >= 0 joules, got mac_joules={self.mac_joules}, '
                             f'ac_joules={self.ac_joules}')


ENERGY_PRESETS: Dict[str, EnergyModel] = {
    '45nm_fp32': EnergyModel(mac_joules=4.6e-12, ac_joules=0.9e-12),
    '45nm_fp16': EnergyModel(mac_joules=1.5e-12, ac_joules=0.4e-12),
    '45nm_int8': EnergyModel(mac_joules=0.23e-12, ac_joules=0.03e-12),
}


def energy_model(preset_or_model: Union[str, EnergyModel]) -> EnergyModel:
    """The :class:`EnergyModel` named by a preset of :data:`ENERGY_PRESETS` (or the model itself).

    Raises:
        ValueError: for an unknown preset name or another type.
    """
    if isinstance(preset_or_model, EnergyModel):
        return preset_or_model
    if isinstance(preset_or_model, str) and preset_or_model in ENERGY_PRESETS:
        return ENERGY_PRESETS[preset_or_model]
    raise ValueError(f'unknown energy model {preset_or_model!r}: use a preset name ({", ".join(ENERGY_PRESETS)}) '
                     f'or an EnergyModel(mac_joules, ac_joules)')


class OperationCounter(LayerHooks):
    """Context manager counting the operations of every convolution and linear layer in a model.

    Hooks ``nn.Conv1d/2d/3d``, ``nn.Linear`` and :class:`SparseConvolution`
    (with subclasses). Per named layer, over every forward call made inside the
    context, on exactly what the layer receives (multi-step ``[T, B, ...]`` or
    flattened ``[T * B, ...]`` inputs count all steps):

    - ``dense_ops``: MACs if every input were non-zero. Conv: output elements x
      ``in_channels / groups`` x kernel volume; linear: output elements x
      ``in_features``; sparse conv: kernel-map pairs (output site, tap) that have
      an input x ``in_channels x out_channels / groups``.
    - ``active_ops``: operations triggered by the non-zero inputs: each non-zero
      input element times the outputs it reaches (``out_channels / groups`` per
      output position or site its kernel taps reach; ``out_features`` for linear),
      exact with padding, stride, dilation and groups.
    - ``synaptic_ops``: ``active_ops`` weighted by the input value when every
      input is a non-negative integer (an integer multi-spike of value ``s``
      counts as ``s`` binary spikes, ``s`` accumulates); ``active_ops`` otherwise.
    - ``input_firing_rate``: share of non-zero input entries (sparse: of the
      features on occupied sites); ``input_is_binary``: every non-zero input is 1;
      ``input_is_integer``: every input is a non-negative integer; ``calls``.

    Counts stay on the device (no synchronisation) until :meth:`summary`, and keep
    accumulating if the context is entered again. Only these layers are counted:
    attention matmuls and layers called through their weights (``nn.MultiheadAttention``)
    are not.

    Example::

        with OperationCounter(model) as counter:
            model(x)
        print(energy_report(counter, model='45nm_fp32'))

    Args:
        model: a module containing convolution or linear layers (or such a layer itself).
    """

    def __init__(self, model: nn.Module):
        super().__init__(model, COUNTED_LAYERS, 'convolution or linear layer to count (nn.Conv1d/2d/3d, nn.Linear, '
                         'SparseConvolution)')
        self.calls: Dict[str, int] = {}

    @torch.no_grad()
    def record(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        """Forward hook: add one call's counts to ``name``'s totals (the order of first calls is kept)."""
        x = (args + tuple(kwargs.values()))[0]
        if isinstance(module, SparseConvolution):
            counts = sparse_convolution_counts(module, x)
        elif isinstance(module, nn.Linear):
            counts = linear_counts(module, x, output)
        else:
            counts = convolution_counts(module, x, output)
        totals = self.totals.setdefault(name, {})
        for key, count in counts.items():
            if key not in totals:
                totals[key] = count
            elif count.dtype == torch.bool:
                totals[key] = totals[key] & count
            else:
                totals[key] = totals[key] + count
        self.calls[name] = self.calls.get(name, 0) + 1

    def summary(self) -> Dict[str, Dict[str, Union[int, float, bool]]]:
        """``{layer name: {statistic: value}}`` for every counted layer that ran, in the order of first calls."""
        summary = {}
        for name, totals in self.totals.items():
            summary[name] = {
                'calls': self.calls[name],
                'dense_ops': round(totals['dense_ops'].item()),
                'active_ops': round(totals['active_ops'].item()),
                'synaptic_ops': round(totals['synaptic_ops'].item()),
                'input_firing_rate': (totals['non_zero'] / totals['elements'].clamp(min=1)).item(),
                'input_is_binary': bool(totals['binary']),
                'input_is_integer': bool(totals['integer']),
            }
        return summary


def input_statistics(x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Element and non-zero counts of a layer input, and whether it is binary or non-negative integer spikes."""
    return {
        'elements': x.new_tensor(x.numel(), dtype=torch.float64),
        'non_zero': torch.count_nonzero(x).to(torch.float64),
        'binary': ((x == 0) | (x == 1)).all(),
        'integer': ((x >= 0) & (x == x.round())).all(),
    }


def spike_counts(x: torch.Tensor, statistics: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Per element: the input value for integer spikes, else 1 where non-zero.

    Float64 keeps every count exact, and autocast leaves float64 alone (no TF32, fp16 or bf16 rounding).
    """
    return torch.where(statistics['integer'], x.to(torch.float64), (x != 0).to(torch.float64))


def linear_counts(module: nn.Linear, x: torch.Tensor, output: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Counts of one ``nn.Linear`` call: every non-zero input feature reaches ``out_features`` outputs."""
    statistics = input_statistics(x)
    return {
        **statistics,
        'dense_ops': statistics['elements'].new_tensor(output.numel() * module.in_features),
        'active_ops': statistics['non_zero'] * module.out_features,
        'synaptic_ops': spike_counts(x, statistics).sum() * module.out_features,
    }


def convolution_counts(module: nn.modules.conv._ConvNd, x: torch.Tensor,
                       output: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Counts of one dense convolution call (batched or unbatched input)."""
    statistics = input_statistics(x)
    spatial_dims = module.weight.dim() - 2
    if x.dim() == spatial_dims + 1:
        x = x[None]
    dense_ops = output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
    return {
        **statistics,
        'dense_ops': statistics['elements'].new_tensor(dense_ops),
        'active_ops': reached_outputs(module, (x != 0).to(torch.float64)),
        'synaptic_ops': reached_outputs(module, spike_counts(x, statistics)),
    }


def reached_outputs(module: nn.modules.conv._ConvNd, weights: torch.Tensor) -> torch.Tensor:
    """``sum over inputs of weight x outputs reached`` for a float64 ``[B, C, *spatial]`` weight per input element.

    Summed over outputs, the inputs each window reads are a convolution with an
    all-ones kernel. Ones are equal across the channels of a group, so the
    channels are summed per group first and convolved with one ``[groups, 1, *kernel]``
    ones kernel, padded exactly as the layer pads (any ``padding_mode``).
    """
    batch, channels, *spatial = weights.shape
    grouped = weights.reshape(batch, module.groups, channels // module.groups, *spatial).sum(2)
    padding = module.padding
    if module.padding_mode != 'zeros':
        grouped = F.pad(grouped, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    ones = grouped.new_ones(module.groups, 1, *module.kernel_size)
    convolve = (F.conv1d, F.conv2d, F.conv3d)[len(spatial) - 1]
    reached = convolve(grouped, ones, None, module.stride, padding, module.dilation, module.groups)
    return reached.sum() * (module.out_channels // module.groups)


def layer_kernel_map(module: SparseConvolution, x: SparseTensor) -> KernelMap:
    """The kernel map ``module`` used on ``x``: found again in ``x``'s cache (the forward built it), never rebuilt."""
    if module.inverse:
        return inverse_convolution_map(x, module.indice_key, module.kernel_size)
    return convolution_map(x, module.kernel_size, module.stride, module.padding, module.dilation, module.subm,
                           module.indice_key)


def sparse_convolution_counts(module: SparseConvolution, x: SparseTensor) -> Dict[str, torch.Tensor]:
    """Counts of one sparse convolution call, from its kernel map.

    A site's features reach one output site per tap that reads it (``fan_out``,
    the valid entries of the map's ``inverse`` row), and each non-zero feature
    then ``out_channels / groups`` outputs.
    """
    kernel_map = layer_kernel_map(module, x)
    statistics = input_statistics(x.features)
    pairs = (kernel_map.neighbors >= 0).sum(dtype=torch.float64)
    fan_out = (kernel_map.inverse >= 0).sum(1, dtype=torch.float64)
    outputs_per_input = module.out_channels // module.groups
    site_non_zero = torch.count_nonzero(x.features, dim=1).to(torch.float64)
    site_spikes = spike_counts(x.features, statistics).sum(1)
    return {
        **statistics,
        'dense_ops': pairs * (module.in_channels * module.out_channels // module.groups),
        'active_ops': (site_non_zero * fan_out).sum() * outputs_per_input,
        'synaptic_ops': (site_spikes * fan_out).sum() * outputs_per_input,
    }


@dataclass
class LayerEnergy:
    """The energy estimate of one layer.

    Attributes:
        name: the layer's name in the model.
        input_kind: ``'binary'``, ``'integer'`` (multi-spike) or ``'real'``.
        input_firing_rate: share of non-zero input entries.
        macs: dense MACs charged (the first layer and layers with real-valued input), else 0.
        synaptic_ops: accumulates charged (SOPs, layers with spike input), else 0.
        ann_macs: MACs of the ANN twin (``dense_ops / time_steps``).
        energy_joules: ``E_MAC x macs + E_AC x synaptic_ops``.
        ann_energy_joules: ``E_MAC x ann_macs``.
    """

    name: str
    input_kind: str
    input_firing_rate: float
    macs: int
    synaptic_ops: int
    ann_macs: float
    energy_joules: float
    ann_energy_joules: float


@dataclass
class EnergyReport:
    """Per-layer and total energy of a spiking network and of its ANN twin.

    Attributes:
        layers: one :class:`LayerEnergy` per counted layer, in the order of first calls.
        energy_model: the per-operation energies used.
    """

    layers: List[LayerEnergy]
    energy_model: EnergyModel

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def synaptic_ops(self) -> int:
        return sum(layer.synaptic_ops for layer in self.layers)

    @property
    def energy_joules(self) -> float:
        return sum(layer.energy_joules for layer in self.layers)

    @property
    def ann_energy_joules(self) -> float:
        return sum(layer.ann_energy_joules for layer in self.layers)

    @property
    def energy_ratio(self) -> float:
        """The spiking network's energy over the ANN twin's (below 1: the spiking network spends less)."""
        return self.energy_joules / self.ann_energy_joules if self.ann_energy_joules else math.nan

    def table(self) -> str:
        """A plain-text table: one row per layer, then the totals and the ratio to the ANN twin."""
        header = ('layer', 'input', 'rate', 'MACs', 'SOPs', 'energy', 'ANN energy')
        rows = [(layer.name, layer.input_kind, f'{layer.input_firing_rate:.3f}', f'{layer.macs:.4g}',
                 f'{layer.synaptic_ops:.4g}', format_joules(layer.energy_joules),
                 format_joules(layer.ann_energy_joules)) for layer in self.layers]
        rows.append(('total', '', '', f'{self.macs:.4g}', f'{self.synaptic_ops:.4g}',
                     format_joules(self.energy_joules), format_joules(self.ann_energy_joules)))
        widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
        lines = ['  '.join(cell.ljust(width) if column < 2 else cell.rjust(width)
                           for column, (cell, width) in enumerate(zip(row, widths))) for row in [header, *rows]]
        lines.insert(1, '-' * len(lines[0]))
        lines.insert(-1, '-' * len(lines[0]))
        lines.append(f'energy / ANN energy = {self.energy_ratio:.4f} '
                     f'(E_MAC {format_joules(self.energy_model.mac_joules)}, '
                     f'E_AC {format_joules(self.energy_model.ac_joules)})')
        return '\n'.join(lines)

    def __str__(self) -> str:
        return self.table()


def format_joules(joules: float) -> str:
    """``joules`` with an SI prefix (``'4.6 pJ'``, ``'1.23 mJ'``)."""
    for scale, unit in ((1, 'J'), (1e-3, 'mJ'), (1e-6, 'uJ'), (1e-9, 'nJ')):
        if joules >= scale:
            return f'{joules / scale:.4g} {unit}'
    return f'{joules / 1e-12:.4g} pJ'


def energy_report(counter: OperationCounter, model: Union[str, EnergyModel] = '45nm_fp32',
                  first_layer: Optional[str] = None, time_steps: int = 1) -> EnergyReport:
    """The energy of the counted run: MACs for real-valued inputs, accumulates for spikes.

    The first layer and every layer whose input was ever not non-negative
    integers cost their ``dense_ops`` in MACs; the others cost their
    ``synaptic_ops`` in accumulates (binary spikes: one per non-zero input and
    output it reaches; integer multi-spikes: one per unit of spike value). The
    ANN twin costs every layer's dense MACs once: ``dense_ops / time_steps``.

    Args:
        counter: an :class:`OperationCounter` that has counted a run.
        model: the energy model: a preset name of :data:`ENERGY_PRESETS` or an :class:`EnergyModel`.
        first_layer: name of the layer that reads the raw input and always costs
            MACs; ``None`` takes the first counted layer that ran.
        time_steps: time steps ``T`` the counted run spans, which the ANN twin runs once.

    Raises:
        ValueError: nothing counted, an unknown energy model or layer name, or ``time_steps`` not an integer >= 1.
    """
    costs = energy_model(model)
    summary = counter.summary()
    if not summary:
        raise ValueError('the OperationCounter has counted nothing: run the model inside its with-block first')
    if first_layer is None:
        first_layer = next(iter(summary))
    elif first_layer not in summary:
        raise ValueError(f'first_layer {first_layer!r} did not run inside the counter; counted layers: '
                         f'{", ".join(summary)}')
    time_steps = as_integer(time_steps, 'time_steps', minimum=1)
    layers = []
    for name, counts in summary.items():
        input_kind = 'binary' if counts['input_is_binary'] else 'integer' if counts['input_is_integer'] else 'real'
        costs_macs = name == first_layer or input_kind == 'real'
        macs = counts['dense_ops'] if costs_macs else 0
        synaptic_ops = 0 if costs_macs else counts['synaptic_ops']
        ann_macs = counts['dense_ops'] / time_steps
        layers.append(LayerEnergy(name, input_kind, counts['input_firing_rate'], macs, synaptic_ops, ann_macs,
                                  costs.mac_joules * macs + costs.ac_joules * synaptic_ops,
                                  costs.mac_joules * ann_macs))
    return EnergyReport(layers, costs)
