"""Step ``build``: compile ``sparsevision._C`` in place for the GPU machine's architecture (sm_90)."""
import importlib.util
import os

from .context import CheckContext, Outcome, StepFailed, StepSkipped, python_command, run_command

CUDA_ARCHITECTURES = '9.0'     # H100 / H200
BUILD_LIMIT_S = 300


def build_extension(context: CheckContext) -> Outcome:
    """``python setup.py build_ext --inplace`` with ``TORCH_CUDA_ARCH_LIST=9.0`` and ``MAX_JOBS`` = the cores."""
    if not context.build:
        found = importlib.util.find_spec('sparsevision._C')
        raise StepSkipped('--no-build: using ' + (found.origin if found else 'no extension (ops run their references)'))
    jobs = os.cpu_count() or 1
    env = {**os.environ, 'TORCH_CUDA_ARCH_LIST': CUDA_ARCHITECTURES, 'MAX_JOBS': str(jobs)}
    if context.on_gpu:
        env['FORCE_CUDA'] = '1'    # a build without the CUDA kernels would be no use here
    result = run_command(python_command('setup.py', 'build_ext', '--inplace'), context, BUILD_LIMIT_S, env,
                         log_name='build.log')
    details = {**result, 'TORCH_CUDA_ARCH_LIST': CUDA_ARCHITECTURES, 'MAX_JOBS': jobs}
    if result['timed_out']:
        raise StepFailed(f'the build ran past {BUILD_LIMIT_S} s', details)
    if result['returncode'] != 0:
        raise StepFailed(f'the build exited with {result["returncode"]}', details)
    return Outcome(f'built for sm_{CUDA_ARCHITECTURES.replace(".", "")} with {jobs} jobs in {result["seconds"]} s',
                   details)
