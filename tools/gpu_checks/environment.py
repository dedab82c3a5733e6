"""Step ``environment``: versions, the device, the extension's kernels, and which optional packages are missing."""
import importlib.util
import platform
import shutil

from .context import CheckContext, Outcome, StepFailed
from .sanitizer import find_compute_sanitizer

OPTIONAL_PACKAGES = ('mmengine', 'open3d', 'spconv', 'cumm', 'pytest', 'triton', 'timm')


def describe_environment(context: CheckContext) -> Outcome:
    """Fails on the GPU machine when the extension has no CUDA kernels (every CUDA step would test references)."""
    import torch

    import sparsevision
    from sparsevision import ops

    info = ops.extension_info()
    missing = [name for name in OPTIONAL_PACKAGES if importlib.util.find_spec(name) is None]
    details = {
        'python': platform.python_version(), 'torch': torch.__version__, 'torch_cuda': torch.version.cuda,
        'sparsevision': sparsevision.__version__, 'extension': str(info), 'cuda_kernels': bool(info.cuda_kernels),
        'missing_optional_packages': missing, 'compute_sanitizer': find_compute_sanitizer(),
        'nvcc': shutil.which('nvcc'),
    }
    if context.on_gpu:
        properties = torch.cuda.get_device_properties(0)
        details.update(gpu=properties.name, multiprocessors=properties.multi_processor_count,
                       memory_gib=round(properties.total_memory / 2**30, 1))
        if not info.cuda_kernels:
            raise StepFailed(f'the extension has no CUDA kernels: {info}', details)
    device = details.get('gpu', 'CPU only')
    return Outcome(f'{device}; torch {torch.__version__}; {info}'
                   + (f'; missing: {", ".join(missing)}' if missing else ''), details)
