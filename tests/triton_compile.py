"""Compiling Triton kernels ahead of time for a GPU architecture, on a machine without a GPU, and reading what the
compiled kernel uses (registers, shared and local memory, atomics)."""
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

CUOBJDUMP = Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin' / 'cuobjdump'   # ships with Triton


@dataclass(frozen=True)
class CompiledKernel:
    registers: int
    shared_bytes: int
    local_bytes: int      # stack frame and local memory: spills, or arrays the compiler could not keep in registers
    atomics: bool         # atomic instructions in the PTX: sums would depend on scheduling


def compile_for(kernel, signature: dict, constexprs: dict, architecture: int, attrs=None, **options) -> CompiledKernel:
    """``triton.compile`` of ``kernel`` for ``sm_<architecture>``.

    Args:
        signature: every argument's Triton type (``'*fp32'``, ``'i32'``, ``'constexpr'``...).
        constexprs: the compile-time arguments' values.
        attrs: argument attributes (e.g. 16-byte pointer alignment), as ``ASTSource`` takes them.
        options: ``num_warps``, ``num_stages``...
    """
    source = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget('cuda', architecture, 32), options=options or None)
    with tempfile.NamedTemporaryFile(suffix='.cubin') as cubin:
        cubin.write(compiled.asm['cubin'])
        cubin.flush()
        report = subprocess.run([str(CUOBJDUMP), '-res-usage', cubin.name], capture_output=True, text=True,
                                check=True).stdout
    usage = {key: int(value) for key, value in re.findall(r'(REG|STACK|SHARED|LOCAL):(\d+)', report)}
    return CompiledKernel(usage['REG'], compiled.metadata.shared, usage['STACK'] + usage['LOCAL'],
                          bool(re.search(r'\b(atom|red)\.', compiled.asm['ptx'])))
