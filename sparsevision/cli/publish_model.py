"""Strip a training checkpoint to its weights for the model zoo.

    sparsevision-publish work_dirs/NAME/best_*.pth sparsevision/model_zoo/weights/NAME.pth

Keeps only the model state_dict (no optimizer, message hub or pickled objects),
so it loads with ``torch.load(weights_only=True)`` anywhere.
"""
import argparse
import hashlib
from pathlib import Path

import torch

from ..engine import run_command
from ..utils import load_state_dict


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint', help='checkpoint written by tools/train.py')
    parser.add_argument('output', help='where the weights-only file goes')
    args = parser.parse_args(argv)
    state_dict = load_state_dict(args.checkpoint)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, output)
    digest = hashlib.sha256(output.read_bytes()).hexdigest()[:8]
    print(f'wrote {output} ({output.stat().st_size / 2**20:.2f} MiB, sha256 {digest}, {len(state_dict)} tensors)')


def run() -> None:
    """The console entry point: bad input ends it with one ``error:`` line."""
    run_command(main)
