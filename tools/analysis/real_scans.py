"""How the 3D models trained on simulated street sweeps do on real scans: predicted classes, ground agreement, boxes.

    python tools/analysis/real_scans.py [--scans DIR] [--out-dir DIR] [--json PATH]

Reads the real scans of ../shared/data/real_scans (a nuScenes LiDAR sweep, a ScanNet room, a SUN RGB-D frame; tests
and analysis only, never copied into the project), runs the shipped segmentor and detector on x, y, z, and reports
per scan: the share of points per predicted class and, as a label-free check of the ground class, the share of the
dominant horizontal plane's points (RANSAC, 0.15 m; the road or floor) that the segmentor calls ground. Writes one
bird's-eye-view PNG per scan.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SCANS = (('nuscenes_lidar_top.bin', 5, 'nuScenes 32-beam LiDAR sweep, city street'),
         ('scannet_scene0000_00.bin', 6, 'ScanNet room reconstruction (indoor)'),
         ('sunrgbd_000017.bin', 6, 'SUN RGB-D single RGB-D frame (indoor)'))
MODELS = ('sparse_unet_lidar_scenes', 'centerpoint_second_lidar_scenes')


def horizontal_plane(points: np.ndarray, distance: float = 0.15) -> np.ndarray:
    """Indices of the largest near-horizontal plane's inliers (open3d RANSAC, seeded); empty if the largest plane
    is not horizontal (normal within 20 degrees of z)."""
    import open3d

    open3d.utility.random.seed(0)
    cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(points[:, :3].astype(np.float64)))
    plane, inliers = cloud.segment_plane(distance, 3, 1000)
    normal = np.asarray(plane[:3]) / np.linalg.norm(plane[:3])
    return np.asarray(inliers) if abs(normal[2]) > np.cos(np.deg2rad(20)) else np.zeros(0, dtype=np.int64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--scans', type=Path, default=REPO.parent / 'shared' / 'data' / 'real_scans')
    parser.add_argument('--out-dir', type=Path, default=Path('outputs/real_scans'))
    parser.add_argument('--json', type=Path, help='also write the results as JSON')
    args = parser.parse_args(argv)
    if not args.scans.is_dir():
        print(f'real_scans: error: {args.scans} does not exist (the real scans live beside the checkout)',
              file=sys.stderr)
        return 1
    from sparsevision.apis.point_cloud import PointCloudInferencer, draw_bird_eye_view
    from sparsevision.datasets.point_cloud_io import read_points

    segmentor, detector = (PointCloudInferencer(name) for name in MODELS)
    rows = []
    for file_name, columns, description in SCANS:
        points = read_points(args.scans / file_name, num_columns=columns, feature_columns=())
        labels = segmentor(points)['point_labels']
        detection = detector(points)
        plane = horizontal_plane(points)
        share = {name: float((labels == index).mean()) for index, name in enumerate(segmentor.class_names)}
        share['outside range'] = float((labels < 0).mean())
        row = dict(scan=file_name, description=description, points=len(points), share_per_class=share,
                   plane_points=len(plane), plane_labelled_ground=float((labels[plane] == 0).mean()) if len(plane)
                   else None, vehicle_boxes=int(len(detection['boxes'])),
                   vehicle_boxes_above_0_3=int((detection['box_scores'] > 0.3).sum()))
        row['png'] = str(draw_bird_eye_view(points, labels, detection['boxes'], segmentor.class_names,
                                            args.out_dir / f'{Path(file_name).stem}.png',
                                            title=f'{description}: {", ".join(MODELS)}',
                                            box_scores=detection['box_scores']))
        rows.append(row)
        classes = ', '.join(f'{name} {value:.1%}' for name, value in share.items())
        ground = 'n/a' if row['plane_labelled_ground'] is None else f'{row["plane_labelled_ground"]:.1%}'
        print(f'{file_name}: {len(points)} points; {classes}; dominant plane {len(plane)} points, labelled ground '
              f'{ground}; {row["vehicle_boxes"]} vehicle boxes ({row["vehicle_boxes_above_0_3"]} above 0.3)')
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
