"""Spiking neurons (IF, LIF, PLIF, multi-spike) over time-first ``[T, B, ...]`` or single-step ``[B, ...]`` input."""
import math
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from .surrogate import SurrogateSpec, build_surrogate

STEP_MODES = ('m', 's')


class SpikingNeuron(nn.Module):
    """Base of every spiking neuron: the step mode, input checks and :meth:`reset`.

    Args:
        step_mode: ``'m'`` (multi-step): input ``[T, B, ...]``, time first, spikes of the same
            shape; ``'s'`` (single-step): input ``[B, ...]``, one time step.
    """

    def __init__(self, step_mode: str = 'm'):
        super().__init__()
        self.step_mode = step_mode

    @property
    def step_mode(self) -> str:
        return self._step_mode

    @step_mode.setter
    def step_mode(self, step_mode: str) -> None:
        if step_mode not in STEP_MODES:
            raise ValueError(f"unknown step_mode {step_mode!r}: use 'm' (input [T, B, ...], time first) or 's' "
                             f"(input [B, ...], one time step)")
        self._step_mode = step_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == 's':
            if x.dim() < 1:
                raise ValueError('single-step input must be [B, ...] with at least one dimension, got a scalar')
            return self.single_step_forward(x)
        if x.dim() < 2:
            raise ValueError(f"multi-step input must be [T, B, ...] with at least two dimensions, got shape "
                             f"{tuple(x.shape)}; add a time dimension (x[None]) or use step_mode='s'")
        if x.shape[0] < 1:
            raise ValueError(f'the time dimension is empty (input shape {tuple(x.shape)}): multi-step input '
                             f'needs T >= 1 steps in dimension 0')
        return self.multi_step_forward(x)

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``[B, ...]`` for one time step."""
        raise NotImplementedError

    def multi_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``[T, B, ...]`` for a whole sequence."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state carried between forward calls (nothing in the base class)."""


class MembraneNeuron(SpikingNeuron):
    """A neuron with a membrane potential: charge, fire through a surrogate, reset.

    Each step charges ``H = charge(X, V)``, fires ``S = surrogate(H - v_threshold)``
    and resets ``V = (1 - S) H + S v_reset`` (hard) or ``V = H - v_threshold S``
    (soft, ``v_reset=None``). In ``'m'`` mode the membrane starts at rest
    (``v_reset``, or 0 for soft reset) on every forward, so no manual reset is
    needed between batches; with ``stateful=False`` a ``'s'`` call starts at rest too.

    ``stateful=True`` is the streaming mode: the membrane (with its autograd graph)
    carries over to the next forward call, in either step mode, until :meth:`reset`.
    A call whose per-step shape or device differs from the stored membrane's
    raises instead of broadcasting.

    A NaN or infinite input makes the membrane NaN or infinite, and no charge or
    reset makes it finite again: the neuron would stay silent for the rest of the
    sequence (for good when streaming) with no error. So every forward checks its
    last membrane and raises a ``ValueError`` naming the first non-finite input
    instead, leaving the stored membrane as it was. The check is one sum over one
    step's membrane (about 2 % of a 4-step LIF forward on one CPU thread); on CUDA
    it also waits for the device once per forward.

    Args:
        v_threshold: firing threshold.
        v_reset: membrane after a spike (hard reset); ``None`` subtracts the threshold instead (soft reset).
        surrogate: surrogate gradient: a name, a dict or an instance (see :func:`build_surrogate`).
        detach_reset: detach the spikes used in the reset from the autograd graph.
        step_mode: ``'m'`` (``[T, B, ...]``) or ``'s'`` (``[B, ...]``).
        stateful: keep the membrane across forward calls until :meth:`reset`.
    """

    def __init__(self, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0, surrogate: SurrogateSpec = 'atan',
                 detach_reset: bool = False, step_mode: str = 'm', stateful: bool = False):
        super().__init__(step_mode)
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.surrogate = build_surrogate(surrogate)
        self.detach_reset = detach_reset
        self.stateful = stateful
        self.membrane: Optional[torch.Tensor] = None

    @property
    def resting_potential(self) -> float:
        """Where the membrane starts: ``v_reset``, or 0 for soft reset."""
        return 0.0 if self.v_reset is None else self.v_reset

    def charge(self, x: torch.Tensor, membrane: torch.Tensor) -> torch.Tensor:
        """The membrane ``H`` after integrating input ``x`` into ``membrane``, before firing."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, membrane: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One time step: ``(spikes, membrane after reset)``."""
        charged = self.charge(x, membrane)
        spikes = self.surrogate(charged - self.v_threshold)
        fired = spikes.detach() if self.detach_reset else spikes
        if self.v_reset is None:
            return spikes, charged - self.v_threshold * fired
        return spikes, (1 - fired) * charged + fired * self.v_reset

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes, membrane = self.step(x, self.initial_membrane(x))
        self.check_finite(membrane, x)
        self.keep(membrane)
        return spikes

    def multi_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        membrane = self.initial_membrane(x[0])
        spikes: List[torch.Tensor] = []
        for inputs in x:
            spike, membrane = self.step(inputs, membrane)
            spikes.append(spike)
        self.check_finite(membrane, x)
        self.keep(membrane)
        return torch.stack(spikes)

    def check_finite(self, membrane: torch.Tensor, x: torch.Tensor) -> None:
        """Refuse a membrane that is no longer finite after a forward on input ``x``.

        One sum of the last membrane catches a non-finite input at any step (it never becomes finite again); a sum
        that overflows from finite values is told apart by a full check, on that rare path only.

        Raises:
            ValueError: naming the first non-finite input, or saying that finite inputs overflowed the membrane.
        """
        if torch.compiler.is_compiling() or torch.isfinite(membrane.detach().sum()) or \
                torch.isfinite(membrane.detach()).all():
            return
        non_finite = (~torch.isfinite(x)).nonzero()
        if non_finite.numel():
            cause = f'input{non_finite[0].tolist()} is {x[tuple(non_finite[0])].item()}'
            advice = ('find where it comes from (for NaN in training, torch.autograd.set_detect_anomaly(True) names '
                      'the operation)')
        else:
            cause = 'finite inputs made it overflow'
            advice = f'scale the input down (it reaches {x.abs().max().item():.3g})'
        raise ValueError(f'{type(self).__name__}: the membrane is no longer finite ({cause}), so the neuron would '
                         f'never fire again; {advice}')

    def initial_membrane(self, x: torch.Tensor) -> torch.Tensor:
        """The stored membrane (streaming mode) or a resting one shaped like one step ``x``."""
        if not self.stateful or self.membrane is None:
            return torch.full_like(x, self.resting_potential)
        if self.membrane.shape != x.shape or self.membrane.device != x.device:
            raise ValueError(f'stale neuron state: the stored membrane is {tuple(self.membrane.shape)} on '
                             f'{self.membrane.device} but this step is {tuple(x.shape)} on {x.device}; call '
                             f'reset() before feeding a new sequence or batch')
        return self.membrane

    def keep(self, membrane: torch.Tensor) -> None:
        """Store the membrane for the next call when streaming."""
        if self.stateful:
            self.membrane = membrane

    def reset(self) -> None:
        """Return to rest: the next forward starts a new sequence."""
        self.membrane = None

    def extra_repr(self) -> str:
        return (f'v_threshold={self.v_threshold}, v_reset={self.v_reset}, surrogate={self.surrogate}, '
                f'detach_reset={self.detach_reset}, step_mode={self.step_mode!r}, stateful={self.stateful}')


class IFNeuron(MembraneNeuron):
    """Integrate-and-fire neuron: ``H = V + X``.

    The neuron family and its charge/fire/reset equations follow SpikingJelly
    (Fang et al., "SpikingJelly: An open-source machine learning infrastructure
    platform for spike-based intelligence", Science Advances 2023). Arguments
    as in :class:`MembraneNeuron`.
    """

    def charge(self, x: torch.Tensor, membrane: torch.Tensor) -> torch.Tensor:
        return membrane + x


def leaky_charge(x: torch.Tensor, membrane: torch.Tensor, decay: Union[float, torch.Tensor],
                 resting_potential: float, decay_input: bool) -> torch.Tensor:
    """Leaky integration with ``decay = 1 / tau``.

    ``V + (X - (V - V_rest)) / tau`` with ``decay_input``, else ``V - (V - V_rest) / tau + X``.
    """
    if decay_input:
        return membrane + (x - (membrane - resting_potential)) * decay
    return membrane - (membrane - resting_potential) * decay + x


class LIFNeuron(MembraneNeuron):
    """Leaky integrate-and-fire neuron: the membrane leaks towards rest with time constant ``tau``.

    ``H = V + (X - (V - V_reset)) / tau`` (``decay_input=True``) or
    ``H = V - (V - V_reset) / tau + X``, with ``V_reset = 0`` in the leak for soft
    reset (SpikingJelly's LIF, Fang et al., Science Advances 2023).

    Args:
        tau: membrane time constant, > 1.
        decay_input: scale the input by ``1 / tau`` as well.
        **kwargs: as in :class:`MembraneNeuron`.
    """

    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not tau > 1:
            raise ValueError(f'LIF tau must be > 1 (the membrane keeps 1 - 1/tau of itself per step), got {tau}')
        self.tau = float(tau)
        self.decay_input = decay_input

    def charge(self, x: torch.Tensor, membrane: torch.Tensor) -> torch.Tensor:
        return leaky_charge(x, membrane, 1 / self.tau, self.resting_potential, self.decay_input)

    def extra_repr(self) -> str:
        return f'tau={self.tau}, decay_input={self.decay_input}, {super().extra_repr()}'


class PLIFNeuron(MembraneNeuron):
    """Parametric LIF neuron: a LIF whose time constant is learnt, ``tau = 1 / sigmoid(w)``.

    Fang et al., "Incorporating Learnable Membrane Time Constant to Enhance
    Learning of Spiking Neural Networks", ICCV 2021. One scalar ``w`` per layer,
    initialised to ``-log(init_tau - 1)`` so that ``tau`` starts at ``init_tau``.

    Args:
        init_tau: initial time constant, > 1.
        decay_input: scale the input by ``1 / tau`` as well.
        **kwargs: as in :class:`MembraneNeuron`.
    """

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not init_tau > 1:
            raise ValueError(f'PLIF init_tau must be > 1 (tau = 1 / sigmoid(w) is always > 1), got {init_tau}')
        self.decay_input = decay_input
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1)))

    @property
    def tau(self) -> torch.Tensor:
        """The current time constant ``1 / sigmoid(w)``."""
        return 1 / torch.sigmoid(self.w)

    def charge(self, x: torch.Tensor, membrane: torch.Tensor) -> torch.Tensor:
        return leaky_charge(x, membrane, torch.sigmoid(self.w), self.resting_potential, self.decay_input)

    def extra_repr(self) -> str:
        return f'tau={self.tau.item():.4g} (learnt), decay_input={self.decay_input}, {super().extra_repr()}'


class MultiSpikeQuantize(torch.autograd.Function):
    """``floor(clamp(x, 0, D) + 0.5)`` forward; gradient passed through where ``0 < x < D``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, max_spikes: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.max_spikes = max_spikes
        return torch.floor(x.clamp(0, max_spikes) + 0.5)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, = ctx.saved_tensors
        inside = (x > 0) & (x < ctx.max_spikes)
        return grad * inside.to(grad.dtype), None


class MultiSpikeNeuron(SpikingNeuron):
    """Integer multi-spike neuron: each element emits ``round(clamp(x, 0, D))`` spikes, ``D = max_spikes``.

    The "Multispike" neuron of E-3DSNN (Qiu et al., "Efficient 3D Recognition
    with Event-driven Spike Sparse Convolution", AAAI 2025) and Spike-driven
    Transformer V3 (Yao et al., TPAMI 2025): integer-valued during training,
    equivalent to ``D`` binary time steps at inference. It has no membrane, so
    both step modes give the same elementwise result and :meth:`reset` is a no-op.

    Args:
        max_spikes: the most spikes one element can emit (``D``), >= 1.
        step_mode: ``'m'`` or ``'s'``, accepted for a uniform interface.
    """

    def __init__(self, max_spikes: int = 4, step_mode: str = 'm'):
        super().__init__(step_mode)
        if not (isinstance(max_spikes, int) and max_spikes >= 1):
            raise ValueError(f'max_spikes must be an integer >= 1 (the most spikes per element), got {max_spikes!r}')
        self.max_spikes = max_spikes

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        return MultiSpikeQuantize.apply(x, self.max_spikes)

    multi_step_forward = single_step_forward

    def extra_repr(self) -> str:
        return f'max_spikes={self.max_spikes}, step_mode={self.step_mode!r}'
