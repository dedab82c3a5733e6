"""Step ``cuda_graph``: a SparseUNet training step (forward and backward) captured in a CUDA graph and replayed.

The replay must give the eager step's output and gradients. Kernel maps are cached on the input tensor by warm-up
steps (run on a side stream, as ``torch.cuda.graph`` asks) before capture. A host sync inside the step makes the
capture fail; the step records the error. On the CPU there is no graph: the eager step runs twice and must give the
same result bitwise (the harness and the step's determinism).
"""
import torch

from .context import CheckContext, Outcome, StepFailed
from .scene import scene_details, street_scene

IN_CHANNELS = 4
SMALL_UNET = dict(base_channels=8, channels=(8, 16, 16, 16, 16, 16, 8, 8), layers=(1,) * 8)   # the model tests'
WARM_UP_STEPS = 3


def unet_training_step(context: CheckContext):
    """``(step, results)``: a step of SparseUNet (``--quick`` / CPU: the tests' small layout) on the scene, and a
    function returning its output and every gradient, as they stand."""
    from sparsevision.models.backbones import SparseUNet
    from sparsevision.sparse import SparseTensor

    sites, _ = street_scene(context)
    torch.manual_seed(0)
    model = SparseUNet(IN_CHANNELS, **(SMALL_UNET if context.quick or not context.on_gpu else {}))
    model = model.to(context.device).train()
    features = torch.randn(sites.indices.shape[0], IN_CHANNELS, generator=torch.Generator().manual_seed(0))
    features = features.to(context.device).requires_grad_()
    tensor = SparseTensor(features, sites.indices.to(context.device), sites.spatial_shape, 1)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    output = {}

    def step():
        for leaf in (features, *parameters):
            leaf.grad = None
        output['features'] = model(tensor).features
        (output['features'].square().sum() / 2).backward()

    def results():
        return [output['features'].detach().clone()] + [leaf.grad.detach().clone() for leaf in (features, *parameters)]

    return step, results


def largest_difference(first, second) -> float:
    return max(float((a.double() - b.double()).abs().max()) if a.numel() else 0.0 for a, b in zip(first, second))


def replay_matches_eager(context: CheckContext) -> Outcome:
    step, results = unet_training_step(context)
    details = scene_details(context)
    if not context.on_gpu:
        step()
        first = results()
        step()
        difference = largest_difference(first, results())
        details.update(max_abs_diff=difference, tensors=len(first))
        if difference != 0:
            raise StepFailed(f'two eager steps differ by up to {difference:.1e}', details)
        return Outcome(f'no CUDA graph on the CPU; two eager steps agree bitwise ({len(first)} tensors)', details,
                       'cpu-equivalent')
    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):
        for _ in range(WARM_UP_STEPS):
            step()
    torch.cuda.current_stream().wait_stream(side_stream)
    step()
    eager = results()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except Exception as error:  # noqa: BLE001  (any capture error is the finding)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StepFailed(f'capture failed: {type(error).__name__}: {first_line}', details) from error
    graph.replay()
    torch.cuda.synchronize()
    replayed = results()
    difference = largest_difference(eager, replayed)
    bitwise = all(torch.equal(a, b) for a, b in zip(eager, replayed))
    details.update(max_abs_diff=difference, bitwise=bitwise, tensors=len(eager))
    if not bitwise:
        raise StepFailed(f'the replay differs from the eager step by up to {difference:.1e}', details)
    return Outcome(f'captured and replayed; output and {len(eager) - 1} gradients equal eager bitwise', details)
