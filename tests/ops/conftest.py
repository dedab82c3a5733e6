"""The ``cuda_backend`` fixture: CUDA kernel tests run on the GPU when there is one, else on the CPU emulation."""
import pytest

from cuda_emulation import backends


@pytest.fixture(params=backends(), ids=repr)
def cuda_backend(request):
    """A :class:`cuda_emulation.Backend`: move inputs with ``backend.to(x)`` and call the ops inside ``with backend:``
    (there the emulated kernels stand in for the CUDA ones); compute expected values outside it."""
    return request.param
