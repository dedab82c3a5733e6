"""Strip a training checkpoint to its weights for the model zoo.

    python tools/publish_model.py work_dirs/NAME/best_*.pth sparsevision/model_zoo/weights/NAME.pth

Keeps only the model state_dict (no optimizer, message hub or pickled objects),
so it loads with ``torch.load(weights_only=True)`` anywhere.
"""
import argparse
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from sparsevision.engine import run_command  # noqa: E402
from sparsevision.utils import load_state_dict  # noqa: E402


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


if __name__ == '__main__':
    run_command(main)
