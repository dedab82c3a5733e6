"""``sparsevision-demo image|pcd|masked-reconstruction [ARGS]``: the demos of ``demo/``, installed; their error line."""
import sys
from importlib import import_module

DEMOS = {'image': 'image_demo', 'pcd': 'pcd_demo', 'masked-reconstruction': 'masked_reconstruction_demo'}


def run(argv=None) -> None:
    """Run the demo named by the first argument with the rest (``sparsevision-demo pcd --help`` lists its options)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in DEMOS:
        raise SystemExit(f'usage: sparsevision-demo {{{",".join(DEMOS)}}} [ARGS]; '
                         'add --help after a demo name for its options')
    demo = import_module(f'{__package__}.{DEMOS[argv[0]]}')
    sys.exit(demo.main(argv[1:]))


def demo_work(name: str, work, args):
    """``work(args)``; a bad input (OSError, ValueError, RuntimeError) ends demo ``name`` with one ``error:`` line."""
    try:
        return work(args)
    except (OSError, ValueError, RuntimeError) as error:
        raise SystemExit(f'{name}: error: {error}') from None
