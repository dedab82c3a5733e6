"""Hide random patches of real photos and let a masked autoencoder (SparK, FCMAE) reconstruct them.

    sparsevision-demo masked-reconstruction [IMAGE ...] [--photo NAME] [--model NAME] [--checkpoint PATH|zoo]
                                              [--mask-ratio R] [--seed S] [--out-dir DIR]

With no image it uses scikit-image's chelsea photo, which the shipped spark_resnet18_w16_photos model never
saw (it was pretrained on crops of astronaut, coffee and rocket). Writes OUT_DIR/masked_reconstruction.png
(input | masked input | reconstruction, one row per image) and masked_reconstruction.json (the mask and
the error on hidden patches). Hidden patches are predicted per-patch-normalised, so they are shown with
their true mean and contrast, as MAE's and SparK's figures do; their structure is the model's.

--model takes any masked autoencoder of the zoo (SparK, FCMAE); another model is refused in one line that names
the masked autoencoders and where the refused model runs instead. The PNG and JSON are written as a pair or not
at all (also when the run is interrupted).
"""
import argparse
import sys
from pathlib import Path

from .demo import demo_work


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='*', help='image files (default: the chelsea photo)')
    parser.add_argument('--photo', action='append', default=[], metavar='NAME',
                        help='a scikit-image photo (astronaut, coffee, chelsea, rocket); repeatable')
    parser.add_argument('--model', default='spark_resnet18_w16_photos', help='zoo model name or config file')
    parser.add_argument('--checkpoint', default='zoo', help="weights file, or 'zoo' for the shipped weights")
    parser.add_argument('--mask-ratio', type=float, default=None, help="share of patches hidden (default: the model's)")
    parser.add_argument('--seed', type=int, default=0, help='seed of the random masks')
    parser.add_argument('--out-dir', default='outputs/demo', help='where the PNG and JSON are written')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


def load_image(path: Path, channels: int, size):
    """An image file as float32 in [0, 1], centre-cropped and resized to ``size``."""
    import cv2
    import numpy as np

    from ..apis.image_classification import fit_to_size

    if not path.is_file():
        raise FileNotFoundError(f'image file not found: {path}')
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'could not decode {path} as an image (is it a PNG/JPEG/BMP file?)')
    if channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return fit_to_size(image, size).astype(np.float32) / np.float32(255)


def main(argv=None) -> int:
    """Run the demo; a bad input or a model that is no masked autoencoder ends it with one ``error:`` line."""
    args = parse_args(argv)
    figure, json_file = demo_work('masked_reconstruction_demo', reconstruct, args)
    print(f'wrote {figure} and {json_file}')
    return 0


def reconstruct(args):
    """Mask and reconstruct the requested images; write the figure and JSON as one set (both or neither).

    Returns:
        The written PNG and JSON files.
    """
    from ..apis import MaskedReconstructionInferencer, output_set, sample_photo, save_reconstruction_figure
    from ..apis.image_classification import write_json_atomically

    photos = args.photo or ([] if args.images else ['chelsea'])
    for image in args.images:
        if not Path(image).is_file():
            raise FileNotFoundError(f'image file not found: {image}')
    inferencer = MaskedReconstructionInferencer(args.model, args.checkpoint, args.device)
    size, channels = inferencer.input_size, inferencer.channels
    images = ([load_image(Path(image), channels, size) for image in args.images]
              + [sample_photo(name, channels, size) for name in photos])
    names = [Path(image).name for image in args.images] + photos
    results = [inferencer(image, args.mask_ratio, args.seed + index) for index, image in enumerate(images)]
    records = [describe(name, result, inferencer.model.downsample_ratio) for name, result in zip(names, results)]
    with output_set(args.out_dir) as outputs:
        figure = save_reconstruction_figure(results, outputs.path('masked_reconstruction.png'), titles=names)
        json_file = write_json_atomically(outputs.path('masked_reconstruction.json'),
                                          dict(model=args.model, images=records))
    return outputs.destination(figure), outputs.destination(json_file)


def describe(name: str, result: dict, patch: int) -> dict:
    """JSON record of one image: its visible-patch grid, the share hidden and the reconstruction's mean squared
    error on the hidden pixels."""
    hidden = ~result['visible'].astype(bool)
    pixels = hidden.repeat(patch, 0).repeat(patch, 1)
    error = float(((result['reconstruction'] - result['input']) ** 2)[pixels].mean()) if hidden.any() else 0.0
    return dict(image=name, visible_patches=result['visible'].astype(int).tolist(),
                hidden_share=float(hidden.mean()), hidden_pixel_mse=error)


if __name__ == '__main__':
    sys.exit(main())
