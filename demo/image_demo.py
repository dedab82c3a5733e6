"""Classify images with a sparsevision zoo model; write a PNG of the predictions and a JSON file.

    python demo/image_demo.py [IMAGE ...] [--photo NAME] [--model NAME] [--checkpoint PATH|zoo] [--out-dir DIR]

With no image it classifies the embedded real handwritten digits in demo/data/digits/
(file names carry the true label) with the shipped ResNet digits weights.

For a token-pruning model (EViT, DynamicViT, ToMe, SpAtten, e.g. --model evit_vit_tiny_p4_digits) it also
writes one token map per image to OUT_DIR/token_maps/: the model's input, then per reduction stage which
patches are kept, dropped (dark, hatched) or merged into one token (one colour and outline per token).

--photo NAME uses one of scikit-image's real photos (astronaut, coffee, chelsea, rocket), converted to the
model's input channels and size. The shipped models are trained on 8x8 digits only (no photo-trained
weights can be downloaded here), so their predictions on a photo mean nothing; the token maps still show
what the router keeps for that input.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

DEMO_DIGITS = Path(__file__).resolve().parent / 'data' / 'digits'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='*', help='image files (default: the embedded digits)')
    parser.add_argument('--photo', action='append', default=[], metavar='NAME',
                        help='a scikit-image photo (astronaut, coffee, chelsea, rocket); repeatable. The shipped '
                             'models are trained on digits: their predictions on photos are meaningless, the token '
                             'maps still show what the router keeps')
    parser.add_argument('--model', default='resnet18_w16_digits', help='zoo model name or config file')
    parser.add_argument('--checkpoint', default='zoo', help="weights file, or 'zoo' for the shipped weights")
    parser.add_argument('--out-dir', default='outputs/demo',
                        help='where image_demo.png/.json (and token_maps/ for token-pruning models) are written')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from sparsevision.apis import ImageClassificationInferencer, routes_tokens, save_token_maps
    from sparsevision.apis.image_classification import write_json_atomically

    files = [Path(image) for image in args.images] or ([] if args.photo else sorted(DEMO_DIGITS.glob('*.png')))
    try:
        missing = [str(image) for image in files if not image.is_file()]
        if missing:
            raise FileNotFoundError(f'image file(s) not found: {", ".join(missing)}')
        inferencer = ImageClassificationInferencer(args.model, args.checkpoint, args.device)
        images = files + [inferencer.sample_photo(name) for name in args.photo]
        names = [image.stem for image in files] + args.photo
        predictions = inferencer(images)
        for source, prediction in zip([str(image) for image in files] + args.photo, predictions):
            prediction['image'] = source
        out_dir = Path(args.out_dir)
        token_maps = (save_token_maps(inferencer, images, predictions, out_dir / 'token_maps', titles=names)
                      if routes_tokens(inferencer.model) else [])
        for prediction, token_map in zip(predictions, token_maps):
            prediction['token_map'] = str(token_map)
        png = inferencer.visualize(images, predictions, out_dir / 'image_demo.png', titles=names)
        write_json_atomically(out_dir / 'image_demo.json', dict(model=args.model, predictions=predictions))
    except (OSError, ValueError, RuntimeError) as error:
        print(f'image_demo: error: {error}', file=sys.stderr)
        return 1
    for prediction in predictions:
        print(f'{prediction["image"]}: {prediction["pred_class"]} ({prediction["pred_score"]:.3f})')
    print(f'wrote {png} and {png.with_suffix(".json")}')
    if token_maps:
        print(f'wrote token maps ({len(token_maps)} PNG) to {token_maps[0].parent}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
