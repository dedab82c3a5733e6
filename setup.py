"""Build and install sparsevision.

The native extension ``sparsevision._C`` is built from ``csrc/``:

* C++ kernels always (``csrc/*.cpp``, ``csrc/cpu/*.cpp``);
* CUDA kernels (``csrc/cuda/*.cu``) too when a CUDA toolkit is found
  (``CUDA_HOME``, else ``/usr/local/cuda``) or ``FORCE_CUDA=1``, unless ``SV_WITH_CUDA=0``;
* nothing at all with ``SV_WITH_OPS=0`` (every op then runs its pure-PyTorch
  reference from ``sparsevision/ops/reference.py``).

``pip install .`` builds in an isolated environment with the torch that ``pyproject.toml`` names; to build against
the torch already installed (the extension must match the torch it runs with), use
``pip install --no-build-isolation .`` (``make`` does this for you).
"""
import glob
import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = '8.0;9.0+PTX'  # sm_80 binaries also run on 8.6/8.9; PTX JITs on newer GPUs


def read_version():
    namespace = {}
    exec((ROOT / 'sparsevision' / 'version.py').read_text(), namespace)
    return namespace['__version__']


def schema_fingerprint():
    """The fingerprint of the op schemas (``sparsevision/ops/schemas.py``), compiled into the extension so a stale
    build is recognised at import instead of aborting the process."""
    namespace = {}
    exec((ROOT / 'sparsevision' / 'ops' / 'schemas.py').read_text(), namespace)
    return namespace['fingerprint']()


def find_cuda_home():
    """The CUDA toolkit to build with, or None."""
    for candidate in (os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH'), '/usr/local/cuda'):
        if candidate and Path(candidate, 'bin', 'nvcc').exists():
            return candidate
    return None


def native_extensions():
    if os.environ.get('SV_WITH_OPS', '1') == '0':
        print('SV_WITH_OPS=0: skipping sparsevision._C; ops will use their pure-PyTorch references.')
        return [], {}
    import torch.utils.cpp_extension as cpp_extension

    cpp_sources = sorted(glob.glob('csrc/*.cpp') + glob.glob('csrc/cpu/*.cpp'))
    cuda_sources = sorted(glob.glob('csrc/cuda/*.cu'))
    cuda_home = find_cuda_home()
    wanted = os.environ.get('SV_WITH_CUDA', '1') != '0'
    with_cuda = wanted and bool(cuda_sources) and (cuda_home is not None or os.environ.get('FORCE_CUDA') == '1')
    cxx_flags = ['-O3', '-fopenmp']
    fingerprint = [('SV_SCHEMA_FINGERPRINT', schema_fingerprint())]
    if with_cuda:
        if cuda_home:
            os.environ['CUDA_HOME'] = cuda_home
            cpp_extension.CUDA_HOME = cuda_home
        os.environ.setdefault('TORCH_CUDA_ARCH_LIST', DEFAULT_CUDA_ARCHS)
        print(f'Building sparsevision._C with CUDA from {cuda_home} '
              f'for TORCH_CUDA_ARCH_LIST={os.environ["TORCH_CUDA_ARCH_LIST"]}')
        extension = cpp_extension.CUDAExtension(
            'sparsevision._C', cpp_sources + cuda_sources,
            define_macros=[('WITH_CUDA', None)] + fingerprint,
            # ptxas reports register spills and local-memory use of every kernel in the build log
            extra_compile_args={'cxx': cxx_flags, 'nvcc': ['-O3', '-Xptxas=-warn-spills,-warn-lmem-usage']},
            py_limited_api=True)
    else:
        reason = 'SV_WITH_CUDA=0' if not wanted else 'no CUDA toolkit found; set CUDA_HOME or FORCE_CUDA=1'
        print(f'Building sparsevision._C with CPU kernels only ({reason}).')
        extension = cpp_extension.CppExtension(
            'sparsevision._C', cpp_sources, define_macros=fingerprint,
            extra_compile_args={'cxx': cxx_flags}, extra_link_args=['-fopenmp'], py_limited_api=True)
    build_ext = cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)
    return [extension], {'build_ext': build_ext}


def ship_configs():
    """Copy configs/ into the package so non-editable installs find them (``sparsevision/.mim/configs``)."""
    target = ROOT / 'sparsevision' / '.mim' / 'configs'
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ROOT / 'configs', target)


ship_configs()
ext_modules, cmdclass = native_extensions()

setup(
    name='sparsevision',
    version=read_version(),
    description='Sparse vision and 3D perception: sparse convolution, token pruning, '
                'sparse masked pretraining and spiking networks on one mmengine zoo.',
    long_description=(ROOT / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['sparsevision', 'sparsevision.*']),
    include_package_data=True,
    package_data={'sparsevision': ['.mim/configs/**/*.py', 'model_zoo/weights/*.pth', 'demo_data/*/*']},
    install_requires=[
        'torch>=2.6,<2.15',
        'torchvision>=0.21',
        'timm>=1.0.15',
        'mmengine>=0.10.6,<0.11',
        'opencv-python>=4.8',
        'numpy>=1.26',
        'scikit-learn>=1.3',
        'scikit-image>=0.22',
        'matplotlib>=3.8',
        'tqdm>=4.66',
    ],
    extras_require={
        'spconv': ['spconv>=2.3'],
        'open3d': ['open3d>=0.19'],
        'tests': ['pytest>=8', 'pytest-timeout>=2.3', 'hypothesis>=6.100', 'ninja'],
    },
    entry_points={'console_scripts': [
        'sparsevision-train = sparsevision.cli.train:run',
        'sparsevision-test = sparsevision.cli.test:run',
        'sparsevision-publish = sparsevision.cli.publish_model:run',
        'sparsevision-demo = sparsevision.cli.demo:run',
    ]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
