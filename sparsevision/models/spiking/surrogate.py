"""Heaviside spikes with surrogate gradients, and a small registry of surrogate shapes."""
import math
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch

SURROGATES: Dict[str, type] = {}


def register_surrogate(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`Surrogate` buildable by ``name`` in :func:`build_surrogate`."""
    def register(cls: type) -> type:
        if name in SURROGATES:
            raise ValueError(f'a surrogate named {name!r} is already registered ({SURROGATES[name].__name__})')
        cls.name = name
        SURROGATES[name] = cls
        return cls
    return register


class HeavisideSpike(torch.autograd.Function):
    """``(x >= 0)`` forward; ``grad * derivative(x)`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, derivative: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.derivative = derivative
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, = ctx.saved_tensors
        return grad * ctx.derivative(x), None


class Surrogate:
    """A spike function: Heaviside step forward, a smooth stand-in ``g'(x)`` for its derivative backward.

    Surrogate gradient learning (Neftci et al., "Surrogate Gradient Learning in
    Spiking Neural Networks", IEEE Signal Processing Magazine 2019). Every
    registered ``g'`` integrates to 1 over the real line, and ``alpha`` sets its
    sharpness (larger = narrower and taller).

    Args:
        alpha: sharpness, > 0; the subclass's default when ``None``.
    """

    name = ''
    default_alpha = 1.0

    def __init__(self, alpha: Optional[float] = None):
        alpha = self.default_alpha if alpha is None else float(alpha)
        if not alpha > 0:
            raise ValueError(f'surrogate alpha (sharpness) must be > 0, got {alpha}')
        self.alpha = alpha

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``(x >= 0)`` in ``x``'s dtype, where ``x`` is membrane minus threshold."""
        return HeavisideSpike.apply(x, self.derivative)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate derivative ``g'(x)`` used in the backward pass."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'{self.name}(alpha={self.alpha})'


@register_surrogate('atan')
class ATanSurrogate(Surrogate):
    """``g'(x) = alpha / (2 (1 + (pi/2 alpha x)^2))``, the derivative of ``arctan(pi/2 alpha x) / pi + 1/2``."""

    default_alpha = 2.0

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha / (2 * (1 + (math.pi / 2 * self.alpha * x) ** 2))


@register_surrogate('sigmoid')
class SigmoidSurrogate(Surrogate):
    """``g'(x) = alpha s (1 - s)`` with ``s = sigmoid(alpha x)``."""

    default_alpha = 4.0

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        sigmoid = torch.sigmoid(self.alpha * x)
        return self.alpha * sigmoid * (1 - sigmoid)


@register_surrogate('rectangle')
class RectangleSurrogate(Surrogate):
    """``g'(x) = alpha`` where ``|x| < 0.5 / alpha``, else 0 (straight-through inside a window)."""

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * (x.abs() < 0.5 / self.alpha).to(x.dtype)


@register_surrogate('triangle')
class TriangleSurrogate(Surrogate):
    """``g'(x) = alpha^2 max(0, 1/alpha - |x|)``: a triangle of half-width ``1/alpha`` and area 1."""

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha ** 2 * (1 / self.alpha - x.abs()).clamp(min=0)


SurrogateSpec = Union[str, Mapping[str, Any], Surrogate]


def build_surrogate(spec: SurrogateSpec) -> Surrogate:
    """Build a :class:`Surrogate`.

    Args:
        spec: a registered name (``'atan'``), a dict (``{'type': 'atan', 'alpha': 3.0}``) or an instance
            (returned as is).
    """
    if isinstance(spec, Surrogate):
        return spec
    if isinstance(spec, str):
        name, arguments = spec, {}
    elif isinstance(spec, Mapping):
        if 'type' not in spec:
            raise ValueError(f"a surrogate dict needs a 'type' key naming one of {sorted(SURROGATES)}, got {spec}")
        arguments = dict(spec)
        name = arguments.pop('type')
    else:
        raise TypeError(f'a surrogate is given as a name, a dict or a Surrogate instance, got {type(spec).__name__}')
    if name not in SURROGATES:
        raise ValueError(f'unknown surrogate {name!r}; registered surrogates: {sorted(SURROGATES)}')
    return SURROGATES[name](**arguments)
