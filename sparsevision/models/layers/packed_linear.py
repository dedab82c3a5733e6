"""Linear layers that multiply with a prepacked oneDNN weight in CPU float32 inference.

MKL's ``sgemm`` (what ``F.linear`` calls on CPU) repacks the weight on every call, which costs most at the
short token counts of pruned ViTs: 72-140 rows of ``vit_small`` run at 160-185 GFLOP/s on the 2-core
reference machine, against 210-220 GFLOP/s with a weight packed once for oneDNN. :func:`pack_linear_layers`
swaps a model's ``nn.Linear`` modules for :class:`PackedLinear`, which shares their parameters (state_dicts are
unchanged) and uses the packed copy only where it cannot change the meaning of the call: eval mode, CPU, float32,
no autograd (``torch.no_grad`` or ``torch.inference_mode``), not inside ``torch.compile``/``torch.export`` or
``torch.jit.trace`` (they see ``F.linear``). In timm ``Mlp`` blocks the GELU after ``fc1`` moves into ``fc1``
(oneDNN applies it as the GEMM writes its output; ``act`` becomes ``nn.Identity``). Results differ from
``F.linear`` by rounding only (a different summation order), are bitwise identical run to run and at 1 or 2
threads, and everything else (training, other dtypes and devices) runs ``F.linear`` unchanged.

The packed copy (one more copy of the weight) is made on first use and remade whenever the weight changes: an
in-place update (optimizer step, ``load_state_dict``, EMA) bumps the weight's version counter, and a new tensor
has a new address (the old one is held until then, so no other tensor can take its address). Only a change
through ``weight.data`` escapes both; ``train()``, ``eval()`` and ``to()`` drop every packed copy, so call
``model.eval()`` after changing weights that way.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

__all__ = ['PackedLinear', 'pack_linear_layers', 'packed_linear_available']


def packed_linear_available() -> bool:
    """Whether this torch build has the oneDNN packed linear ops."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_reorder_linear_weight')
            and hasattr(torch.ops.mkldnn, '_linear_pointwise'))


class PackedLinear(nn.Linear):
    """``nn.Linear`` with a cached oneDNN-packed weight for CPU float32 inference (see the module docstring).

    ``gelu`` (``None``, ``'none'`` or ``'tanh'``, as ``nn.GELU``'s ``approximate``) applies a GELU to the output.
    """

    gelu: Optional[str] = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, gelu: Optional[str] = None) -> 'PackedLinear':
        """A ``PackedLinear`` sharing ``linear``'s weight and bias parameters."""
        if gelu not in (None, 'none', 'tanh'):
            raise ValueError(f"gelu must be None, 'none' or 'tanh' (nn.GELU's approximate), got {gelu!r}")
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.in_features, packed.out_features = linear.in_features, linear.out_features
        packed.weight, packed.bias = linear.weight, linear.bias
        packed.gelu = gelu
        packed.train(linear.training)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_packed_weight(x):
            attribute, algorithm = ('none', '') if self.gelu is None else ('gelu', self.gelu)
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, attribute, [], algorithm)
        y = F.linear(x, self.weight, self.bias)
        return y if self.gelu is None else F.gelu(y, approximate=self.gelu)

    def extra_repr(self) -> str:
        return super().extra_repr() + ('' if self.gelu is None else f', gelu={self.gelu!r}')

    def uses_packed_weight(self, x: torch.Tensor) -> bool:
        """Whether this call multiplies with the packed weight (see the module docstring for when)."""
        weight = self.weight
        return (not self.training and not torch.is_grad_enabled() and x.device.type == 'cpu'
                and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.dim() >= 2 and x.numel() > 0
                and not torch.is_inference(weight)   # inference tensors have no version counter to follow
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling())

    def packed_weight(self) -> torch.Tensor:
        """The oneDNN copy of the current weight, repacked when the weight changed since the last call."""
        weight = self.weight
        key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.stride())
        cached = self.__dict__.get('_packed')
        if cached is None or cached[0] != key:
            # the detached alias keeps the packed storage alive, so no new weight can reuse its address
            cached = (key, weight.detach(), torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
            self.__dict__['_packed'] = cached
        return cached[2]

    def train(self, mode: bool = True) -> 'PackedLinear':
        self.__dict__.pop('_packed', None)
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self.__dict__.pop('_packed', None)   # a device or dtype move: the old copy would only hold memory
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop('_packed', None)   # oneDNN tensors neither pickle nor deep-copy; the copy repacks on first use
        return state


def pack_linear_layers(model: nn.Module) -> nn.Module:
    """Swap every plain ``nn.Linear`` in ``model`` for a :class:`PackedLinear` (in place); returns ``model``.

    A timm ``Mlp``'s ``nn.GELU`` is fused into its ``fc1``.

    Raises:
        RuntimeError: this torch build has no oneDNN (``torch.backends.mkldnn``); run the model unpacked.
    """
    if not packed_linear_available():
        raise RuntimeError('packed linear layers need a torch build with oneDNN (torch.backends.mkldnn); '
                           'this one has none: run the model without pack_linear_layers')
    for parent in list(model.modules()):
        if type(parent) is Mlp and type(parent.fc1) is nn.Linear and type(parent.act) is nn.GELU:
            parent.fc1 = PackedLinear.from_linear(parent.fc1, gelu=parent.act.approximate)
            parent.act = nn.Identity()
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear.from_linear(child))
    return model
