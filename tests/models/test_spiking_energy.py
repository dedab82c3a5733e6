"""Operation counter and energy report: hand-counted dense and sparse layers, spike kinds, presets, hooks, maps."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsevision.sparse.kernel_maps as kernel_maps
from sparsevision.models.spiking import MultiSpikeNeuron
from sparsevision.models.spiking.energy import (ENERGY_PRESETS, EnergyModel, OperationCounter, energy_model,
                                                energy_report)
from sparsevision.sparse import SparseConv3d, SparseInverseConv3d, SparseTensor, SubMConv3d

PJ = 1e-12
BINARY_ROWS = torch.tensor([[1., 0., 1., 0.], [0., 0., 0., 1.]])   # 3 spikes in 8 entries

# five sites: A, B, C touch each other (3 pairs each in a 3x3x3 submanifold kernel); D and E (batch 1) are alone
SUBM_SITES = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1], [0, 2, 2, 2], [1, 0, 0, 0]], dtype=torch.int32)
SUBM_PAIRS = 11

# k3 s2 p1 on a 4^3 grid: axis input 0 -> output 0, 1 -> outputs 0 and 1, 3 -> output 1
STRIDED_SITES = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1], [0, 3, 3, 3]], dtype=torch.int32)
STRIDED_FAN_OUT = [1, 8, 1]


def spike_map(shape, positions, values=None) -> torch.Tensor:
    """A zero tensor with ``values`` (default 1) at ``positions``."""
    x = torch.zeros(shape)
    for position, value in zip(positions, values or [1.0] * len(positions)):
        x[position] = value
    return x


def count(layer: nn.Module, *inputs):
    """The summary entry of ``layer`` after one call on ``inputs``."""
    with OperationCounter(layer) as counter:
        layer(*inputs)
    (counts,) = counter.summary().values()
    return counts


# --- dense layers, counted by hand ------------------------------------------------------------------------------

def test_linear_counts_by_hand():
    counts = count(nn.Linear(4, 3), BINARY_ROWS)
    assert counts == {'calls': 1, 'dense_ops': 2 * 3 * 4, 'active_ops': 3 * 3, 'synaptic_ops': 3 * 3,
                      'input_firing_rate': 3 / 8, 'input_is_binary': True, 'input_is_integer': True}


def test_multi_step_and_flattened_inputs_count_the_same():
    steps = torch.stack([BINARY_ROWS, BINARY_ROWS.flip(1), torch.zeros(2, 4)])   # [T=3, N=2, C=4]
    layer = nn.Linear(4, 3)
    assert count(layer, steps) == count(layer, steps.flatten(0, 1))
    assert count(layer, steps)['active_ops'] == 6 * 3


def test_conv2d_counts_by_hand():
    # 3x3, padding 1 on 4x4: a spike at (r, c) reaches (rows within 1 of r) x (cols within 1 of c) outputs
    x = spike_map((1, 1, 4, 4), [(0, 0, 0, 0), (0, 0, 1, 2), (0, 0, 3, 3)])
    counts = count(nn.Conv2d(1, 2, 3, padding=1), x)
    assert counts['dense_ops'] == 2 * 16 * 1 * 9
    assert counts['active_ops'] == (2 * 2 + 3 * 3 + 2 * 2) * 2
    assert counts['input_firing_rate'] == 3 / 16


def test_strided_conv2d_counts_by_hand():
    # outputs (i, j) read rows 2i-1..2i+1: (0,0) reaches 1 output, (1,2) reaches 2 (rows 0, 1 x col 1), (3,3) 1
    x = spike_map((1, 1, 4, 4), [(0, 0, 0, 0), (0, 0, 1, 2), (0, 0, 3, 3)])
    counts = count(nn.Conv2d(1, 1, 3, stride=2, padding=1), x)
    assert counts['dense_ops'] == 4 * 9
    assert counts['active_ops'] == 1 + 2 + 1


def test_grouped_conv_counts_by_hand():
    # groups of channels (0, 1) and (2, 3): 2 + 1 spikes, each reaching out_channels / groups = 2 outputs
    x = spike_map((1, 4, 1, 1), [(0, 0, 0, 0), (0, 1, 0, 0), (0, 3, 0, 0)])
    counts = count(nn.Conv2d(4, 4, 1, groups=2), x)
    assert counts['dense_ops'] == 4 * 2
    assert counts['active_ops'] == 3 * 2


@pytest.mark.parametrize('conv', [
    nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
    nn.Conv2d(4, 4, 3, padding=1, groups=4),
    nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding='valid'),
    nn.Conv2d(2, 4, 3, padding='same', dilation=2, padding_mode='reflect', groups=2),
    nn.Conv2d(2, 3, 3, padding=1, padding_mode='circular'),
    nn.Conv3d(2, 2, 3, stride=2, padding=1),
], ids=lambda conv: repr(conv))
def test_conv_active_ops_match_an_all_ones_convolution(conv):
    shape = (2, conv.in_channels) + (7,) * (conv.weight.dim() - 2)
    x = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    ones = torch.ones_like(conv.weight)
    assert count(conv, x)['active_ops'] == conv._conv_forward(x, ones, None).sum().item()
    all_firing = count(conv, torch.ones(shape))   # zero padding reads no input: fewer active than dense ops
    zero_padded = conv.padding_mode == 'zeros' and conv.padding not in ('valid', (0,) * len(conv.kernel_size))
    assert (all_firing['active_ops'] < all_firing['dense_ops']) == zero_padded
    assert all_firing['active_ops'] <= all_firing['dense_ops']


def test_counts_stay_exact_under_autocast():
    conv = nn.Conv1d(257, 1, 1)   # 257 spikes per window: not representable in bfloat16
    with torch.autocast('cpu', dtype=torch.bfloat16):
        counts = count(conv, torch.ones(1, 257, 1))
    assert counts['active_ops'] == counts['synaptic_ops'] == 257


def test_unbatched_conv_input_counts_like_batched():
    x = spike_map((1, 4, 4), [(0, 1, 2)])
    conv = nn.Conv2d(1, 2, 3, padding=1)
    assert count(conv, x) == count(conv, x[None])


# --- sparse layers, counted by hand -----------------------------------------------------------------------------

def test_submanifold_counts_by_hand():
    features = torch.tensor([[1., 0.], [1., 1.], [0., 0.], [0., 1.], [1., 0.]])   # non-zeros 1, 2, 0, 1, 1
    x = SparseTensor(features, SUBM_SITES, [3, 3, 3], batch_size=2)
    counts = count(SubMConv3d(2, 3), x)
    assert counts['dense_ops'] == SUBM_PAIRS * 2 * 3
    assert counts['active_ops'] == (1 * 3 + 2 * 3 + 0 * 3 + 1 * 1 + 1 * 1) * 3
    assert counts['input_firing_rate'] == 5 / 10


def test_grouped_submanifold_counts_by_hand():
    features = torch.tensor([[1., 0., 0., 1.], [0., 0., 0., 0.], [1., 1., 1., 0.], [0., 0., 0., 1.], [1., 1., 1., 1.]])
    x = SparseTensor(features, SUBM_SITES, [3, 3, 3], batch_size=2)
    counts = count(SubMConv3d(4, 4, groups=2), x)
    assert counts['dense_ops'] == SUBM_PAIRS * 4 * 4 // 2
    assert counts['active_ops'] == (2 * 3 + 0 * 3 + 3 * 3 + 1 * 1 + 4 * 1) * (4 // 2)


def test_strided_sparse_conv_counts_by_hand():
    features = torch.tensor([[1., 1.], [0., 1.], [0., 0.]])
    x = SparseTensor(features, STRIDED_SITES, [4, 4, 4], batch_size=1)
    counts = count(SparseConv3d(2, 3, 3, stride=2, padding=1), x)
    assert counts['dense_ops'] == sum(STRIDED_FAN_OUT) * 2 * 3
    assert counts['active_ops'] == (2 * 1 + 1 * 8 + 0 * 1) * 3


def test_inverse_sparse_conv_counts_by_hand():
    x = SparseTensor(torch.ones(3, 2), STRIDED_SITES, [4, 4, 4], batch_size=1)
    down = SparseConv3d(2, 3, 3, stride=2, padding=1, indice_key='down')
    coarse = down(x)   # 8 sites; (0,0,0) and (1,1,1) read 2 inputs, the others 1: the inverse's fan-out
    spikes = torch.zeros(8, 3)
    spikes[0] = torch.tensor([1., 0., 0.])   # (0,0,0): 1 spike, fan-out 2
    spikes[1] = torch.tensor([1., 1., 0.])   # (0,0,1): 2 spikes, fan-out 1
    spikes[7] = torch.tensor([1., 1., 1.])   # (1,1,1): 3 spikes, fan-out 2
    counts = count(SparseInverseConv3d(3, 2, 3, indice_key='down'), coarse.replace_feature(spikes))
    assert counts['dense_ops'] == sum(STRIDED_FAN_OUT) * 3 * 2
    assert counts['active_ops'] == (1 * 2 + 2 * 1 + 3 * 2) * 2


@pytest.mark.parametrize('conv', [SubMConv3d(4, 6, groups=2), SparseConv3d(4, 2, 2, stride=2),
                                  SparseConv3d(4, 4, 3, stride=2, padding=1, dilation=1, groups=4)],
                         ids=lambda conv: repr(conv))
def test_sparse_active_ops_match_a_loop_over_the_kernel_map(conv):
    generator = torch.Generator().manual_seed(1)
    sites = torch.unique(torch.randint(0, 6, (40, 4), generator=generator).mul_(torch.tensor([0, 1, 1, 1])), dim=0)
    features = (torch.rand(len(sites), 4, generator=generator) < 0.4).float()
    x = SparseTensor(features, sites.int(), [6, 6, 6], batch_size=1)
    counts = count(conv, x)
    (kernel_map,) = x.kernel_maps.values()
    expected = sum(int(torch.count_nonzero(features[n])) for n in kernel_map.neighbors.flatten().tolist() if n >= 0)
    assert counts['active_ops'] == expected * conv.out_channels // conv.groups


# --- spike kinds and the energy report --------------------------------------------------------------------------

def test_integer_multi_spikes_count_one_accumulate_per_unit():
    counts = count(nn.Linear(3, 2), torch.tensor([[2., 0., 1.], [0., 4., 0.]]))
    assert (counts['active_ops'], counts['synaptic_ops']) == (3 * 2, (2 + 1 + 4) * 2)
    assert (counts['input_is_binary'], counts['input_is_integer']) == (False, True)
    x = spike_map((1, 1, 4, 4), [(0, 0, 0, 0), (0, 0, 1, 2)], values=[2.0, 1.0])
    counts = count(nn.Conv2d(1, 1, 3, padding=1), x)
    assert (counts['active_ops'], counts['synaptic_ops']) == (4 + 9, 2 * 4 + 1 * 9)
    features = torch.tensor([[2., 0.], [1., 3.], [0., 0.], [0., 1.], [1., 0.]])   # spike sums 2, 4, 0, 1, 1
    counts = count(SubMConv3d(2, 3), SparseTensor(features, SUBM_SITES, [3, 3, 3], batch_size=2))
    assert counts['synaptic_ops'] == (2 * 3 + 4 * 3 + 0 * 3 + 1 * 1 + 1 * 1) * 3


def two_linear_layers() -> nn.ModuleDict:
    return nn.ModuleDict({'stem': nn.Linear(4, 3), 'fc': nn.Linear(4, 5)})


def counted_twice(layers: nn.ModuleDict, fc_input: torch.Tensor) -> OperationCounter:
    with OperationCounter(layers) as counter:
        layers['stem'](BINARY_ROWS)   # dense 2*3*4 = 24, active 3*3 = 9
        layers['fc'](fc_input)        # dense 2*5*4 = 40, active 3*5 = 15 on BINARY_ROWS
    return counter


def test_first_layer_costs_macs_and_spike_layers_accumulates():
    counter = counted_twice(two_linear_layers(), BINARY_ROWS)
    report = energy_report(counter)
    stem, fc = report.layers
    assert (stem.name, stem.macs, stem.synaptic_ops) == ('stem', 24, 0)
    assert (fc.name, fc.macs, fc.synaptic_ops) == ('fc', 0, 15)
    assert report.energy_joules == pytest.approx(24 * 4.6 * PJ + 15 * 0.9 * PJ)
    assert report.ann_energy_joules == pytest.approx((24 + 40) * 4.6 * PJ)
    assert report.energy_ratio == pytest.approx((24 * 4.6 + 15 * 0.9) / (64 * 4.6))
    swapped = energy_report(counter, first_layer='fc')
    assert [(layer.macs, layer.synaptic_ops) for layer in swapped.layers] == [(0, 9), (40, 0)]
    assert swapped.energy_joules == pytest.approx(9 * 0.9 * PJ + 40 * 4.6 * PJ)


def test_real_valued_inputs_cost_macs_anywhere():
    report = energy_report(counted_twice(two_linear_layers(), BINARY_ROWS * 0.5), model='45nm_int8')
    assert [(layer.input_kind, layer.macs, layer.synaptic_ops) for layer in report.layers] == [
        ('binary', 24, 0), ('real', 40, 0)]
    assert report.energy_joules == pytest.approx(64 * 0.23 * PJ)
    assert report.energy_ratio == pytest.approx(1.0)


def test_multi_spike_layer_energy_and_time_steps():
    report = energy_report(counted_twice(two_linear_layers(), BINARY_ROWS * 3), model='45nm_fp16', time_steps=2)
    fc = report.layers[1]
    assert (fc.input_kind, fc.synaptic_ops, fc.energy_joules) == ('integer', 3 * 15, pytest.approx(45 * 0.4 * PJ))
    assert report.ann_energy_joules == pytest.approx(64 / 2 * 1.5 * PJ)


def test_spiking_network_end_to_end_with_and_without_grad():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), MultiSpikeNeuron(step_mode='s'),
                          nn.Conv2d(2, 2, 3, padding=1))
    x = torch.randn(2, 1, 5, 5) * 4
    with OperationCounter(model) as counter:
        model(x).sum().backward()
    with torch.no_grad(), OperationCounter(model) as no_grad_counter:
        model(x)
    assert counter.summary() == no_grad_counter.summary()
    spikes = model[1](model[0](x)).detach()
    assert spikes.max() > 1   # multi-spikes, not only binary ones
    second = counter.summary()['2']
    assert second['input_is_integer'] and second['synaptic_ops'] == F.conv2d(spikes, torch.ones(2, 2, 3, 3),
                                                                             padding=1).sum().item()
    report = energy_report(counter)
    assert [layer.input_kind for layer in report.layers] == ['real', 'integer']
    assert report.layers[0].macs == 2 * 25 * 2 * 9 and report.layers[1].synaptic_ops == second['synaptic_ops']
    table = str(report).splitlines()
    rule = '-' * len(table[0])
    assert [line.split()[0] for line in table] == ['layer', rule, '0', '2', rule, 'total', 'energy']


# --- presets, errors, hooks, kernel maps ------------------------------------------------------------------------

def test_presets_and_energy_model_lookup():
    assert ENERGY_PRESETS['45nm_fp32'] == EnergyModel(4.6e-12, 0.9e-12)
    assert ENERGY_PRESETS['45nm_fp16'] == EnergyModel(1.5e-12, 0.4e-12)
    assert ENERGY_PRESETS['45nm_int8'] == EnergyModel(0.23e-12, 0.03e-12)
    custom = EnergyModel(mac_joules=3e-12, ac_joules=1e-13)
    assert energy_model('45nm_int8') is ENERGY_PRESETS['45nm_int8'] and energy_model(custom) is custom
    with pytest.raises(ValueError, match='45nm_fp32, 45nm_fp16, 45nm_int8'):
        energy_model('7nm_fp8')
    with pytest.raises(ValueError, match='>= 0 joules'):
        EnergyModel(-1.0, 1.0)


def test_report_errors():
    counter = counted_twice(two_linear_layers(), BINARY_ROWS)
    with pytest.raises(ValueError, match='counted layers: stem, fc'):
        energy_report(counter, first_layer='head')
    with pytest.raises(ValueError, match='time_steps must be >= 1, got 0'):
        energy_report(counter, time_steps=0)
    with pytest.raises(ValueError, match='time_steps must be an integer, got 1.5'):
        energy_report(counter, time_steps=1.5)
    with pytest.raises(ValueError, match='45nm_fp16'):
        energy_report(counter, model='fp32')
    with pytest.raises(ValueError, match='counted nothing'):
        energy_report(OperationCounter(two_linear_layers()))
    with pytest.raises(ValueError, match='no convolution or linear layer'):
        OperationCounter(nn.ReLU())


def test_hooks_are_removed_on_exit_and_counts_accumulate_on_reentry():
    layers = two_linear_layers()
    counter = OperationCounter(layers)
    with counter:
        with pytest.raises(RuntimeError, match='already active'):
            counter.__enter__()
        layers['stem'](BINARY_ROWS)
    assert all(not module._forward_hooks for module in layers.modules())
    layers['stem'](BINARY_ROWS)
    assert counter.summary()['stem']['calls'] == 1
    with counter:
        layers['stem'](input=BINARY_ROWS)   # keyword input
    assert counter.summary()['stem']['calls'] == 2 and counter.summary()['stem']['active_ops'] == 2 * 9


def test_counting_builds_no_kernel_map(monkeypatch):
    builds = []
    build = kernel_maps._build
    monkeypatch.setattr(kernel_maps, '_build', lambda *args: builds.append(1) or build(*args))
    x = SparseTensor(torch.ones(3, 2), STRIDED_SITES, [4, 4, 4], batch_size=1)
    layers = nn.ModuleDict({'subm': SubMConv3d(2, 2), 'down': SparseConv3d(2, 3, 3, stride=2, padding=1,
                                                                           indice_key='down'),
                            'up': SparseInverseConv3d(3, 2, 3, indice_key='down')})
    with OperationCounter(layers) as counter:
        layers['up'](layers['down'](layers['subm'](x)))
    assert len(builds) == 2   # the forwards' own builds: submanifold and strided; the inverse reuses the strided
    assert [counts['calls'] for counts in counter.summary().values()] == [1, 1, 1]
