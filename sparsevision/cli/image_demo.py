"""Classify images with a sparsevision zoo model; write a PNG of the predictions and a JSON file.

    sparsevision-demo image [IMAGE ...] [--photo NAME] [--model NAME] [--checkpoint PATH|zoo] [--out-dir DIR]

With no image it classifies the embedded real handwritten digits in sparsevision/demo_data/digits/
(file names carry the true label) with the shipped ResNet digits weights.

For a token-pruning model (EViT, DynamicViT, ToMe, SpAtten, e.g. --model evit_vit_tiny_p4_digits) it also
writes one token map per image to OUT_DIR/token_maps/: the model's input, then per reduction stage which
patches are kept, dropped (dark, hatched) or merged into one token (one colour and outline per token).

--photo NAME uses one of scikit-image's real photos (astronaut, coffee, chelsea, rocket), converted to the
model's input channels and size. The shipped models are trained on 8x8 digits only (no photo-trained
weights can be downloaded here), so their predictions on a photo mean nothing; the token maps still show
what the router keeps for that input.

--model takes any image classifier of the zoo; another model (a point-cloud, event-camera or masked-autoencoder
model) is refused in one line that names the image classifiers and where the refused model runs instead.
The PNG, JSON and token maps of a run are written as a whole or not at all (also when the run is interrupted);
token maps of an earlier run that this run does not write are removed.

Large images: a file with a side over 4096 pixels is area-reduced (cv2.INTER_AREA, aspect kept) to a longer side
of 4096 as it is read, before it becomes float32 (the prediction is the one for the file reduced that way
beforehand); one of more than 134 million pixels (2**27) is refused in one line, from its header, before it is
decoded. The PNG draws images reduced to at most 512 pixels a side.
"""
import argparse
import sys
from pathlib import Path

from .demo import demo_work

DEMO_DIGITS = Path(__file__).resolve().parent.parent / 'demo_data' / 'digits'
TOKEN_MAPS = 'token_maps/[0-9][0-9]*_*.png'   # <index>_<name>.png; a run removes those it did not write


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
    """Run the demo; a bad input or a model that is no image classifier ends it with one ``error:`` line."""
    args = parse_args(argv)
    predictions, files = demo_work('image_demo', classify, args)
    for prediction in predictions:
        print(f'{prediction["image"]}: {prediction["pred_class"]} ({prediction["pred_score"]:.3f})')
    print(f'wrote {files["png"]} and {files["json"]}')
    if files['token_maps']:
        print(f'wrote token maps ({len(files["token_maps"])} PNG) to {files["token_maps"][0].parent}')
    return 0


def classify(args):
    """Classify the requested images and write the PNG, JSON and token maps as one set (all or none).

    Returns:
        The predictions and the written files: ``{'png', 'json', 'token_maps'}``.
    """
    from ..apis import ImageClassificationInferencer, output_set, routes_tokens, save_token_maps
    from ..apis.image_classification import write_json_atomically

    files = [Path(image) for image in args.images] or ([] if args.photo else sorted(DEMO_DIGITS.glob('*.png')))
    missing = [str(image) for image in files if not image.is_file()]
    if missing:
        raise FileNotFoundError(f'image file(s) not found: {", ".join(missing)}')
    inferencer = ImageClassificationInferencer(args.model, args.checkpoint, args.device)
    images = files + [inferencer.sample_photo(name) for name in args.photo]
    names = [image.stem for image in files] + args.photo
    predictions = inferencer(images)
    for source, prediction in zip([str(image) for image in files] + args.photo, predictions):
        prediction['image'] = source
    with output_set(args.out_dir, owned=[TOKEN_MAPS]) as outputs:
        token_maps = []
        if routes_tokens(inferencer.model):
            staged = save_token_maps(inferencer, images, predictions, outputs.path('token_maps'), titles=names)
            token_maps = [outputs.destination(path) for path in staged]
        for prediction, token_map in zip(predictions, token_maps):
            prediction['token_map'] = str(token_map)
        png = inferencer.visualize(images, predictions, outputs.path('image_demo.png'), titles=names)
        json_file = write_json_atomically(outputs.path('image_demo.json'),
                                          dict(model=args.model, predictions=predictions))
    return predictions, dict(png=outputs.destination(png), json=outputs.destination(json_file), token_maps=token_maps)


if __name__ == '__main__':
    sys.exit(main())
