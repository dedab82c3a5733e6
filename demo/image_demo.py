"""Classify images with a sparsevision zoo model; write a PNG of the predictions and a JSON file.

    python demo/image_demo.py [IMAGE ...] [--model NAME] [--checkpoint PATH|zoo] [--out-dir DIR]

With no image it classifies the embedded real handwritten digits in demo/data/digits/
(file names carry the true label) with the shipped ResNet digits weights.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

DEMO_DIGITS = Path(__file__).resolve().parent / 'data' / 'digits'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('images', nargs='*', help='image files (default: the embedded digits)')
    parser.add_argument('--model', default='resnet18_w16_digits', help='zoo model name or config file')
    parser.add_argument('--checkpoint', default='zoo', help="weights file, or 'zoo' for the shipped weights")
    parser.add_argument('--out-dir', default='outputs/demo', help='where image_demo.png/.json are written')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from sparsevision.apis import ImageClassificationInferencer
    from sparsevision.apis.image_classification import write_json_atomically

    images = [Path(image) for image in args.images] or sorted(DEMO_DIGITS.glob('*.png'))
    try:
        missing = [str(image) for image in images if not image.is_file()]
        if missing:
            raise FileNotFoundError(f'image file(s) not found: {", ".join(missing)}')
        inferencer = ImageClassificationInferencer(args.model, args.checkpoint, args.device)
        predictions = inferencer(images)
        for image, prediction in zip(images, predictions):
            prediction['image'] = str(image)
        out_dir = Path(args.out_dir)
        png = inferencer.visualize(images, predictions, out_dir / 'image_demo.png',
                                   titles=[image.stem for image in images])
        write_json_atomically(out_dir / 'image_demo.json', dict(model=args.model, predictions=predictions))
    except (OSError, ValueError, RuntimeError) as error:
        print(f'image_demo: error: {error}', file=sys.stderr)
        return 1
    for prediction in predictions:
        print(f'{prediction["image"]}: {prediction["pred_class"]} ({prediction["pred_score"]:.3f})')
    print(f'wrote {png} and {png.with_suffix(".json")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
