"""Spiking neurons: surrogate gradients, hand-computed dynamics, step modes, streaming state, errors, monitors."""
import math

import pytest
import torch
from torch import nn

from sparsevision.models.spiking import (SURROGATES, FiringMonitor, IFNeuron, LIFNeuron, MembraneNeuron,
                                         MultiSpikeNeuron, PLIFNeuron, Surrogate, build_surrogate,
                                         register_surrogate)

X = [0.6, 0.6, 0.6, 1.5, 0.0]   # one neuron's input over five steps, used by every hand-computed sequence

CLOSED_FORMS = {   # g'(x) written out independently of the library
    'atan': lambda x, a: a / (2 * (1 + (math.pi / 2 * a * x) ** 2)),
    'sigmoid': lambda x, a: a * torch.exp(-a * x) / (1 + torch.exp(-a * x)) ** 2,
    'rectangle': lambda x, a: torch.where(x.abs() < 0.5 / a, a, 0.0).to(x.dtype),
    'triangle': lambda x, a: torch.relu(a - a * a * x.abs()),
}
DEFAULT_ALPHAS = {'atan': 2.0, 'sigmoid': 4.0, 'rectangle': 1.0, 'triangle': 1.0}
NEURONS = {
    'if': IFNeuron,
    'lif': LIFNeuron,
    'plif': PLIFNeuron,
    'multispike': MultiSpikeNeuron,
}
MEMBRANE_NEURONS = ['if', 'lif', 'plif']


def sequence(values, dtype=torch.float64) -> torch.Tensor:
    """``[T, 1]``: one neuron over ``len(values)`` steps."""
    return torch.tensor(values, dtype=dtype)[:, None]


def membrane_trajectory(neuron: MembraneNeuron, values):
    """Spikes and membrane after each step of a streaming single-step copy of ``neuron``."""
    neuron.step_mode, neuron.stateful = 's', True
    spikes, membranes = [], []
    for value in values:
        spikes.append(neuron(torch.tensor([value], dtype=torch.float64)).item())
        membranes.append(neuron.membrane.item())
    return spikes, membranes


# --- surrogates ---------------------------------------------------------------------------------------------------

def test_registry_holds_the_four_surrogates():
    assert sorted(SURROGATES) == sorted(CLOSED_FORMS)


@pytest.mark.parametrize('name', sorted(SURROGATES))
@pytest.mark.parametrize('alpha', [None, 0.5, 3.0])
def test_surrogate_gradient_matches_formula(name, alpha):
    surrogate = build_surrogate(name if alpha is None else {'type': name, 'alpha': alpha})
    expected_alpha = DEFAULT_ALPHAS[name] if alpha is None else alpha
    assert surrogate.alpha == expected_alpha
    x = torch.cat([torch.randn(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                   torch.tensor([0.0, -0.0, 1e-9, -1e-9], dtype=torch.float64)]).requires_grad_()
    spikes = surrogate(x)
    assert spikes.dtype == x.dtype
    assert torch.equal(spikes, (x >= 0).double())
    assert spikes[-4:].tolist() == [1.0, 1.0, 1.0, 0.0]
    upstream = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad, = torch.autograd.grad(spikes, x, upstream)
    derivative = surrogate.derivative(x.detach())
    torch.testing.assert_close(grad, upstream * derivative)
    torch.testing.assert_close(derivative, CLOSED_FORMS[name](x.detach(), expected_alpha))


@pytest.mark.parametrize('name', sorted(SURROGATES))
def test_surrogate_derivative_integrates_to_one(name):
    x = torch.linspace(-200, 200, 2_000_001, dtype=torch.float64)
    area = torch.trapezoid(build_surrogate(name).derivative(x), x).item()
    assert area == pytest.approx(1.0, abs=5e-3)


def test_build_surrogate_specs_and_errors():
    instance = build_surrogate('triangle')
    assert build_surrogate(instance) is instance
    assert repr(build_surrogate({'type': 'sigmoid', 'alpha': 2})) == 'sigmoid(alpha=2.0)'
    with pytest.raises(ValueError, match=r"unknown surrogate 'erf'.*\['atan', 'rectangle', 'sigmoid', 'triangle'\]"):
        build_surrogate('erf')
    with pytest.raises(ValueError, match="needs a 'type' key"):
        build_surrogate({'alpha': 2.0})
    with pytest.raises(ValueError, match='alpha .* must be > 0'):
        build_surrogate({'type': 'atan', 'alpha': 0.0})
    with pytest.raises(TypeError, match='name, a dict or a Surrogate'):
        build_surrogate(2.0)
    with pytest.raises(ValueError, match='already registered'):
        register_surrogate('atan')(type('Duplicate', (Surrogate,), {}))
    assert sorted(SURROGATES) == sorted(CLOSED_FORMS)


# --- dynamics against hand-computed sequences ---------------------------------------------------------------------

@pytest.mark.parametrize('neuron, expected_spikes, expected_membrane', [
    # IF, hard reset: H = V + X
    (IFNeuron(), [0, 1, 0, 1, 0], [0.6, 0.0, 0.6, 0.0, 0.0]),
    # IF, soft reset: the excess over threshold carries over, so the last step fires on residue alone
    (IFNeuron(v_reset=None), [0, 1, 0, 1, 1], [0.6, 0.2, 0.8, 1.3, 0.3]),
    # IF with a low threshold fires on every non-zero step
    (IFNeuron(v_threshold=0.5), [1, 1, 1, 1, 0], [0.0, 0.0, 0.0, 0.0, 0.0]),
    # LIF tau=2, decay_input: H = (V + X) / 2
    (LIFNeuron(), [0, 0, 0, 1, 0], [0.3, 0.45, 0.525, 0.0, 0.0]),
    # LIF soft reset: H = (V + X) / 2, V = H - 1 after a spike
    (LIFNeuron(v_reset=None), [0, 0, 0, 1, 0], [0.3, 0.45, 0.525, 0.0125, 0.00625]),
    # LIF without input decay: H = V / 2 + X
    (LIFNeuron(decay_input=False), [0, 0, 1, 1, 0], [0.6, 0.9, 0.0, 0.0, 0.0]),
    # LIF leaking towards v_reset = -0.2 from rest at -0.2: H = V + (X - (V + 0.2)) / 2, threshold 0.8
    (LIFNeuron(v_threshold=0.8, v_reset=-0.2), [0, 0, 0, 1, 0], [0.1, 0.25, 0.325, -0.2, -0.2]),
    # LIF tau=4: H = V + (X - V) / 4
    (LIFNeuron(tau=4.0, v_threshold=0.5), [0, 0, 0, 1, 0], [0.15, 0.2625, 0.346875, 0.0, 0.0]),
])
def test_dynamics_match_hand_computed_sequences(neuron, expected_spikes, expected_membrane):
    assert neuron(sequence(X)).flatten().tolist() == expected_spikes
    spikes, membrane = membrane_trajectory(neuron, X)
    assert spikes == expected_spikes
    assert membrane == pytest.approx(expected_membrane, abs=1e-12)


@pytest.mark.parametrize('decay_input', [True, False])
@pytest.mark.parametrize('v_reset', [0.0, None])
def test_plif_starts_as_lif_with_init_tau(decay_input, v_reset):
    x = torch.rand(6, 3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    plif = PLIFNeuron(init_tau=3.0, decay_input=decay_input, v_reset=v_reset).double()
    lif = LIFNeuron(tau=3.0, decay_input=decay_input, v_reset=v_reset)
    assert plif.tau.item() == pytest.approx(3.0)
    torch.testing.assert_close(plif(x), lif(x))
    assert 0 < lif(x).mean() < 1


def test_plif_tau_is_learnt():
    plif = PLIFNeuron()
    x = torch.rand(4, 8, 16, generator=torch.Generator().manual_seed(0)) * 2
    plif(x).sum().backward()
    assert plif.w.grad is not None and plif.w.grad.abs().item() > 0
    assert [name for name, _ in plif.named_parameters()] == ['w']


def test_detach_reset_changes_gradients_not_spikes():
    x = torch.rand(6, 4, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    outputs, grads = [], []
    for detach_reset in (False, True):
        leaf = x.clone().requires_grad_()
        spikes = LIFNeuron(detach_reset=detach_reset)(leaf)
        spikes.sum().backward()
        outputs.append(spikes.detach())
        grads.append(leaf.grad)
    assert 0 < outputs[0].mean() < 1
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(grads[0], grads[1])


def test_multispike_values_and_gradient_mask():
    x = torch.tensor([-1.0, 0.0, 0.2, 0.5, 1.49, 2.5, 3.7, 4.0, 6.0], requires_grad=True)
    spikes = MultiSpikeNeuron(step_mode='s')(x)
    assert spikes.tolist() == [0, 0, 0, 1, 1, 3, 4, 4, 4]
    spikes.backward(torch.full_like(x, 2.0))
    assert x.grad.tolist() == [0, 0, 2, 2, 2, 2, 2, 0, 0]
    assert MultiSpikeNeuron(max_spikes=1)(x[None, :, None]).flatten().tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]


# --- step modes and state -----------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', sorted(NEURONS))
def test_multi_step_equals_streaming_single_steps(kind):
    torch.manual_seed(0)
    x = (torch.rand(5, 3, 4, dtype=torch.float64) * 2.5).requires_grad_()
    multi = NEURONS[kind]().double()
    single = NEURONS[kind](step_mode='s', **({} if kind == 'multispike' else {'stateful': True})).double()
    expected = multi(x)
    stepped = torch.stack([single(x[t]) for t in range(x.shape[0])])
    assert torch.equal(stepped, expected)
    weights = torch.rand(x.shape, dtype=torch.float64)
    grad_multi, = torch.autograd.grad((expected * weights).sum(), x)
    grad_single, = torch.autograd.grad((stepped * weights).sum(), x)
    torch.testing.assert_close(grad_single, grad_multi)


@pytest.mark.parametrize('kind', sorted(NEURONS))
def test_each_forward_starts_from_rest(kind):
    x = torch.rand(4, 2, 8, generator=torch.Generator().manual_seed(0)) * 2
    neuron = NEURONS[kind]()
    first = neuron(x)
    assert torch.equal(neuron(x), first)
    assert torch.equal(neuron(x[:, :1]), first[:, :1])   # another batch size needs no reset either
    assert getattr(neuron, 'membrane', None) is None   # nothing (and no autograd graph) kept between calls


def test_single_step_without_streaming_starts_from_rest():
    neuron = IFNeuron(step_mode='s')
    step = torch.tensor([0.6])
    assert [neuron(step).item() for _ in range(3)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize('step_mode', ['m', 's'])
def test_streaming_keeps_state_until_reset(step_mode):
    x = torch.rand(8, 2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    expected = LIFNeuron(v_reset=None)(x)
    stream = LIFNeuron(v_reset=None, step_mode=step_mode, stateful=True)
    if step_mode == 'm':
        chunks = [stream(x[:3]), stream(x[3:])]
    else:
        chunks = [stream(step)[None] for step in x]
    torch.testing.assert_close(torch.cat(chunks), expected, rtol=0, atol=0)
    assert stream.membrane is not None
    stream.reset()
    assert stream.membrane is None
    fresh = LIFNeuron(v_reset=None, step_mode=step_mode)(x[5:] if step_mode == 'm' else x[5])
    assert torch.equal(stream(x[5:] if step_mode == 'm' else x[5]), fresh)


def test_stale_streaming_state_raises_until_reset():
    neuron = IFNeuron(step_mode='s', stateful=True)
    neuron(torch.rand(2, 3))
    with pytest.raises(ValueError, match=r'stale neuron state.*\(2, 3\).*\(4, 3\).*call reset\(\)'):
        neuron(torch.rand(4, 3))
    with pytest.raises(ValueError, match='stale'):
        neuron(torch.rand(1, 3))   # would broadcast: still refused
    neuron.reset()
    assert neuron(torch.rand(4, 3)).shape == (4, 3)


def test_switching_a_streaming_neuron_to_multi_step_needs_reset():
    neuron = IFNeuron(step_mode='s', stateful=True)
    neuron(torch.rand(2, 3))
    neuron.step_mode = 'm'
    with pytest.raises(ValueError, match='stale'):
        neuron(torch.rand(5, 4, 3))
    neuron.reset()
    assert neuron(torch.rand(5, 4, 3)).shape == (5, 4, 3)


@pytest.mark.parametrize('kind', MEMBRANE_NEURONS)
@pytest.mark.parametrize('v_reset', [0.0, None])
@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_a_non_finite_input_raises_instead_of_silencing_the_neuron(kind, v_reset, bad):
    """Left alone, the membrane would stay NaN/inf for the rest of the sequence and never fire again."""
    x = torch.rand(4, 2, 3, generator=torch.Generator().manual_seed(0))
    x[1, 0, 2] = bad
    with pytest.raises(ValueError, match=rf'{NEURONS[kind].__name__}: the membrane is no longer finite '
                                         rf'\(input\[1, 0, 2\] is {bad}\), so the neuron would never fire again'):
        NEURONS[kind](v_reset=v_reset)(x)


def test_a_streaming_neuron_keeps_its_state_when_an_input_is_not_finite():
    neuron = IFNeuron(step_mode='s', stateful=True)
    assert neuron(torch.full((2, 3), 0.5)).eq(0).all()
    with pytest.raises(ValueError, match=r'input\[0, 1\] is nan'):
        neuron(torch.tensor([[0.5, math.nan, 0.5], [0.5, 0.5, 0.5]]))
    assert neuron.membrane.eq(0.5).all()
    assert neuron(torch.full((2, 3), 0.5)).eq(1).all()   # 0.5 + 0.5 reaches the threshold: still fires


def test_an_overflowing_membrane_says_so():
    with pytest.raises(ValueError, match=r'finite inputs made it overflow.*scale the input down \(it reaches 3e\+38\)'):
        IFNeuron(v_reset=None)(torch.full((3, 2), 3e38))


# --- every neuron, every surrogate: forward + backward ------------------------------------------------------------

def check_forward_backward(neuron: nn.Module, binary: bool) -> None:
    x = (torch.randn(3, 2, 4, 5, generator=torch.Generator().manual_seed(0)) * 2).requires_grad_()
    spikes = neuron(x)
    assert spikes.shape == x.shape and spikes.dtype == x.dtype
    values = set(spikes.unique().tolist())
    assert values <= ({0.0, 1.0} if binary else {0.0, 1.0, 2.0, 3.0, 4.0}) and len(values) > 1
    spikes.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for parameter in neuron.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


@pytest.mark.parametrize('surrogate', sorted(SURROGATES))
@pytest.mark.parametrize('kind', MEMBRANE_NEURONS)
@pytest.mark.parametrize('v_reset', [0.0, None])
def test_membrane_neurons_forward_backward(kind, surrogate, v_reset):
    check_forward_backward(NEURONS[kind](surrogate=surrogate, v_reset=v_reset), binary=True)


def test_multispike_forward_backward():
    check_forward_backward(MultiSpikeNeuron(), binary=False)


def test_neurons_are_readable():
    assert repr(IFNeuron(v_reset=None, surrogate='rectangle')) == (
        "IFNeuron(v_threshold=1.0, v_reset=None, surrogate=rectangle(alpha=1.0), detach_reset=False, "
        "step_mode='m', stateful=False)")
    assert repr(LIFNeuron(tau=3, detach_reset=True)).startswith('LIFNeuron(tau=3.0, decay_input=True, v_threshold')
    assert 'tau=2 (learnt)' in repr(PLIFNeuron())
    assert repr(MultiSpikeNeuron(step_mode='s')) == "MultiSpikeNeuron(max_spikes=4, step_mode='s')"


# --- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('build, message', [
    (lambda: LIFNeuron(tau=1.0), 'tau must be > 1'),
    (lambda: LIFNeuron(tau=0.5), 'tau must be > 1'),
    (lambda: PLIFNeuron(init_tau=1.0), 'init_tau must be > 1'),
    (lambda: MultiSpikeNeuron(max_spikes=0), 'max_spikes must be an integer >= 1'),
    (lambda: MultiSpikeNeuron(max_spikes=2.5), 'max_spikes must be an integer >= 1'),
    (lambda: IFNeuron(step_mode='multi'), r"unknown step_mode 'multi'.*'m'.*'s'"),
    (lambda: MultiSpikeNeuron(step_mode='x'), 'unknown step_mode'),
    (lambda: LIFNeuron(surrogate='erf'), r"unknown surrogate 'erf'; registered surrogates: \['atan'"),
])
def test_bad_arguments_raise(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize('kind', sorted(NEURONS))
@pytest.mark.parametrize('step_mode, x, message', [
    ('m', torch.zeros(0, 2, 3), r'time dimension is empty.*T >= 1'),
    ('m', torch.zeros(5), r'at least two dimensions.*x\[None\]'),
    ('s', torch.tensor(1.0), 'at least one dimension'),
])
def test_bad_input_shapes_raise(kind, step_mode, x, message):
    with pytest.raises(ValueError, match=message):
        NEURONS[kind](step_mode=step_mode)(x)


def test_setting_an_unknown_step_mode_raises():
    neuron = LIFNeuron()
    with pytest.raises(ValueError, match='unknown step_mode'):
        neuron.step_mode = 'S'
    assert neuron.step_mode == 'm'


# --- firing monitor -----------------------------------------------------------------------------------------------

class TwoNeurons(nn.Module):
    def __init__(self):
        super().__init__()
        self.binary = IFNeuron()
        self.multi = MultiSpikeNeuron()
        self.single = IFNeuron(step_mode='s')

    def forward(self, x):
        return self.binary(x), self.multi(x), self.single(x[0])


def test_firing_monitor_counts_by_hand():
    model = TwoNeurons()
    # [T=2, N=3 sites, C=2 channels]. IF: only site 0 at t=0 (2 >= 1) and site 2 at t=1 (0.5 + 0.6) fire.
    # Multi-spike: round(x) gives 2 at (0, 0, 0), 1 at (0, 2, 0) and 1 at (1, 2, 0).
    x = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [0.5, 0.0]],
                      [[0.0, 0.0], [0.0, 0.0], [0.6, 0.0]]])
    with FiringMonitor(model) as monitor:
        model(x)
        first = monitor.summary()
        model(torch.full((1, 1, 2), 3.0))   # a second call of another size: every element fires (3 spikes each)
    assert first['binary'] == pytest.approx({'firing_rate': 2 / 12, 'mean_spikes': 2 / 12, 'active_site_ratio': 2 / 6})
    assert first['multi'] == pytest.approx({'firing_rate': 3 / 12, 'mean_spikes': 4 / 12, 'active_site_ratio': 3 / 6})
    assert first['single'] == pytest.approx({'firing_rate': 1 / 6, 'mean_spikes': 1 / 6})   # [N, C]: no sites
    summary = monitor.summary()
    assert summary['binary'] == pytest.approx({'firing_rate': 4 / 14, 'mean_spikes': 4 / 14,
                                               'active_site_ratio': 3 / 7})
    assert summary['multi'] == pytest.approx({'firing_rate': 5 / 14, 'mean_spikes': 10 / 14,
                                              'active_site_ratio': 4 / 7})
    model(x)   # hooks are gone after the context
    assert monitor.summary() == summary
    assert all(not module._forward_hooks for module in model.modules())


def test_firing_monitor_ignores_non_site_shapes_and_names_a_bare_neuron():
    neuron = LIFNeuron()
    with FiringMonitor(neuron) as monitor:
        neuron(torch.full((2, 1, 3, 4, 4), 5.0))
    assert monitor.summary() == {'LIFNeuron': {'firing_rate': 1.0, 'mean_spikes': 1.0}}


def test_firing_monitor_needs_spiking_neurons():
    with pytest.raises(ValueError, match='contains no SpikingNeuron'):
        FiringMonitor(nn.Linear(2, 2))
    monitor = FiringMonitor(IFNeuron())
    with monitor:
        with pytest.raises(RuntimeError, match='already active'):
            monitor.__enter__()
