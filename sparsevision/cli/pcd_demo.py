"""Segment, detect or classify point clouds with sparsevision zoo models; write a bird's-eye-view PNG per cloud
and a JSON file.

    sparsevision-demo pcd [POINTS ...] [--model NAME ...] [--checkpoint PATH|zoo ...] [--out-dir DIR]
                            [--columns N] [--xyz I J K] [--features I ...]

With no file it runs on the two embedded samples: a simulated street sweep (sparsevision/demo_data/point_clouds/:
scene 0 of SimulatedLidarSceneDataset's 'test' split, which no model trained on) and a real scene, scikit-image's
Middlebury Motorcycle stereo pair with its ground-truth disparity back-projected to points.

Files: .ply, .pcd, .xyz (open3d), .npy ([P, >= 3]) and KITTI-style .bin (float32 rows; --columns gives the row
width, --xyz which columns are the coordinates, e.g. a nuScenes sweep: --columns 5; ScanNet: --columns 6). The
default models (a SparseUNet segmentor and a SECOND CenterPoint detector, trained on simulated street sweeps with
the sensor 1.8 m above the ground) read x, y, z only, so clouds from any sensor fit them; each adds its
predictions: points coloured by class, vehicle boxes drawn.

A single-object classifier (sparse_resnet_shapes, trained on 8 primitive shapes) takes clouds that hold one object
of any size: each is centred, scaled into the unit sphere and voxelised as in training, and the predicted class
goes into the title and the JSON. On a street or room scan it still names a shape, which then means nothing.
Another model (an image, event-camera or masked-autoencoder model) is refused in one line that names the models
this demo runs and where the refused model runs instead. The PNGs and JSON of a run are written as a whole or not
at all (also when the run is interrupted).

Large clouds: memory follows the voxels, plus at most about 150 bytes per input point (a 10-million-point .bin
file peaks at 1.5 GiB with the default models, the process itself included), and every step prints a progress
line. Clouds whose points would need more than the memory available are refused in one line before they are
read. A cloud of more than 500,000 points is drawn as a random subset of 500,000 of them (said in the PNG's title
and as drawn_points in the JSON); the JSON counts every point.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from .demo import demo_work

DEMO_CLOUDS = Path(__file__).resolve().parent.parent / 'demo_data' / 'point_clouds'
MOTORCYCLE = 'stereo_motorcycle'
DEFAULT_MODELS = ('sparse_unet_lidar_scenes', 'centerpoint_second_lidar_scenes')
BYTES_PER_POINT = 150   # memory the demo needs per input point beside the models' voxels (measured, rounded up)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('points', nargs='*', help=f'point-cloud files (default: the embedded samples); '
                                                  f'{MOTORCYCLE!r} names the stereo sample')
    parser.add_argument('--model', action='append', help='zoo model name or config file; repeatable '
                                                         f'(default: {" and ".join(DEFAULT_MODELS)})')
    parser.add_argument('--checkpoint', action='append',
                        help="weights file per --model, or 'zoo' for the shipped weights (default: zoo)")
    parser.add_argument('--out-dir', default='outputs/demo', help='where <cloud>.png and pcd_demo.json go')
    parser.add_argument('--columns', type=int, help='float32 values per row of .bin files (default 4)')
    parser.add_argument('--xyz', type=int, nargs=3, metavar=('X', 'Y', 'Z'), help='coordinate columns (default 0 1 2)')
    parser.add_argument('--features', type=int, nargs='*', default=[],
                        help='feature columns after x, y, z, for models trained with features (default: none)')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


def load_clouds(names, args):
    """(title, points) per requested cloud; checks that they fit in memory, then reads everything before any
    model runs."""
    from ..apis.point_cloud import stereo_motorcycle_points
    from ..datasets.point_cloud_io import count_points, read_points

    options = {key: value for key, value in (('num_columns', args.columns), ('xyz_columns', args.xyz),
                                             ('feature_columns', args.features)) if value is not None}
    check_memory({name: count_points(name, options.get('num_columns', 4)) for name in names if name != MOTORCYCLE})
    clouds = []
    for name in names:
        start = time.perf_counter()
        if name == MOTORCYCLE:
            clouds.append((MOTORCYCLE, stereo_motorcycle_points()))
        else:
            clouds.append((Path(name).stem, read_points(name, **options)))
        print(f'read {name}: {len(clouds[-1][1])} points, {time.perf_counter() - start:.1f} s', flush=True)
    return clouds


def check_memory(point_counts: dict) -> None:
    """Refuse files whose points (``{file: points}``) would need more than the memory available now.

    Raises:
        ValueError: naming the points, the memory they need (:data:`BYTES_PER_POINT` each) and what is available.
    """
    total = sum(point_counts.values())
    available = available_memory()
    if available is not None and total * BYTES_PER_POINT > available:
        raise ValueError(f'{total:,} points in {", ".join(point_counts)} need about '
                         f'{total * BYTES_PER_POINT / 2**30:.1f} GiB ({BYTES_PER_POINT} bytes a point) but '
                         f'{available / 2**30:.1f} GiB of memory is available: subsample or crop the cloud first, '
                         'or use a machine with more memory')


def available_memory() -> Optional[int]:
    """Bytes of memory available without swapping (Linux's ``MemAvailable``), or ``None`` where the system does
    not say."""
    try:
        with open('/proc/meminfo') as meminfo:
            for line in meminfo:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main(argv=None) -> int:
    """Run the demo; a bad input or a model that takes no point clouds ends it with one ``error:`` line."""
    args = parse_args(argv)
    records, json_file = demo_work('pcd_demo', predict, args)
    for record in records:
        print(json.dumps({key: value for key, value in record.items() if key != 'png'})[:300])
    print(f'wrote {", ".join(record["png"] for record in records)} and {json_file}')
    return 0


def predict(args):
    """Run every model on every cloud, then write the PNGs and the JSON as one set (all or none).

    Returns:
        The JSON records (one per cloud) and the JSON file.
    """
    from ..apis import output_set
    from ..apis.image_classification import write_json_atomically
    from ..apis.point_cloud import PointCloudInferencer, draw_bird_eye_view, drawn_rows

    models = args.model or list(DEFAULT_MODELS)
    checkpoints = args.checkpoint or ['zoo'] * len(models)
    if len(checkpoints) != len(models):
        raise ValueError(f'{len(checkpoints)} --checkpoint values for {len(models)} models; give one per --model')
    clouds = load_clouds(args.points or [str(path) for path in sorted(DEMO_CLOUDS.glob('*.bin'))] + [MOTORCYCLE],
                         args)
    inferencers = [PointCloudInferencer(model, checkpoint, args.device)
                   for model, checkpoint in zip(models, checkpoints)]
    records, pictures = [], []
    for index, (title, points) in enumerate(clouds):
        start = time.perf_counter()
        prediction, record, point_classes, captions = {}, dict(points=title, num_points=int(len(points))), (), []
        for inferencer in inferencers:
            model_start = time.perf_counter()
            result = inferencer(points)
            prediction.update(result)
            record[inferencer.name] = summary = inferencer.describe(result)
            captions.append(caption(inferencer.name, summary))
            if 'point_labels' in result:
                point_classes = inferencer.class_names
            print(f'[{index + 1}/{len(clouds)}] {title}: {inferencer.name}, '
                  f'{time.perf_counter() - model_start:.1f} s', flush=True)
        records.append(record)
        rows = drawn_rows(len(points))
        subset = '' if rows is None else f'\n{len(rows):,} of {len(points):,} points drawn (a random subset)'
        if rows is not None:
            record['drawn_points'] = len(rows)
        pictures.append(dict(points=drawn(points, rows), point_labels=drawn(prediction.get('point_labels'), rows),
                             boxes=prediction.get('boxes'), class_names=point_classes,
                             title=f'{title}: {", ".join(captions)}{subset}', box_scores=prediction.get('box_scores')))
        print(f'[{index + 1}/{len(clouds)}] {title}: {len(points)} points, '
              f'{len(prediction.get("boxes", ()))} boxes, {time.perf_counter() - start:.1f} s', flush=True)
    with output_set(args.out_dir) as outputs:
        for picture, record in zip(pictures, records):
            start = time.perf_counter()
            png = draw_bird_eye_view(out_file=outputs.path(f'{record["points"]}.png'), **picture)
            record['png'] = str(outputs.destination(png))
            print(f'drew {record["points"]}.png: {len(picture["points"])} points, {time.perf_counter() - start:.1f} s',
                  flush=True)
        json_file = write_json_atomically(outputs.path('pcd_demo.json'), dict(models=models, predictions=records))
    return records, outputs.destination(json_file)


def drawn(values, rows):
    """The rows of ``values`` a picture draws (all for ``rows=None``; ``None`` stays ``None``)."""
    return values if values is None or rows is None else values[rows]


def caption(name: str, summary: dict) -> str:
    """A model's part of a picture's title: its name, and the class it gives the cloud if it is a classifier."""
    return f'{name} -> {summary["pred_class"]} ({summary["pred_score"]:.2f})' if 'pred_class' in summary else name


if __name__ == '__main__':
    sys.exit(main())
