"""Street scenes built from open3d meshes and scanned by a simulated spinning LiDAR.

The building blocks (:func:`box_mesh`, :func:`pole_mesh`, :func:`building_row`,
:func:`spinning_lidar_directions`) are shared by the benchmark street of
``tools/benchmark/scenes.py`` and by :func:`simulate_street_sweep`, which makes
the labelled scenes of :class:`~sparsevision.datasets.SimulatedLidarSceneDataset`.
open3d is imported inside the functions, so importing this module never needs it.
"""
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

from ..utils.optional import import_optional

STREET_CLASSES = ('ground', 'vehicle', 'pole', 'building')
VEHICLE_CLASSES = ('vehicle',)
# Reflectivity of each class's surface: a return's intensity is this times the cosine of the incidence angle.
CLASS_REFLECTIVITY = np.array([0.25, 0.8, 0.55, 0.45])
SIDEWALK_HEIGHT_M = 0.15
VEHICLE_CLEARANCE_M = 0.25


def box_mesh(center: Sequence[float], size: Sequence[float], yaw: float = 0.0):
    """An open3d box mesh of ``size`` (x, y, z) centred at ``center`` and turned by ``yaw`` about z."""
    open3d = import_optional('open3d', 'open3d', 'simulated street scenes')

    mesh = open3d.geometry.TriangleMesh.create_box(*size)
    mesh.translate(-np.asarray(size) / 2)
    mesh.rotate(open3d.geometry.get_rotation_matrix_from_xyz((0.0, 0.0, yaw)), center=(0.0, 0.0, 0.0))
    return mesh.translate(center)


def pole_mesh(x: float, y: float, radius: float, height: float, base_z: float = 0.0):
    """An open3d upright cylinder standing on ``base_z`` at (x, y)."""
    open3d = import_optional('open3d', 'open3d', 'simulated street scenes')

    cylinder = open3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution=16)
    return cylinder.translate((x, y, base_z + height / 2))


def building_row(rng: np.random.Generator, side: int, setback: float, x_range: Tuple[float, float] = (-70.0, 70.0),
                 length: Tuple[float, float] = (8.0, 20.0), depth: Tuple[float, float] = (8.0, 15.0),
                 height: Tuple[float, float] = (6.0, 20.0), gap: Tuple[float, float] = (2.0, 6.0),
                 base_z: float = 0.0) -> list:
    """Box buildings side by side along x, facing the street at ``|y| = setback`` on one side.

    Args:
        rng: random generator; each building draws length, depth, height, then the gap after it.
        side: ``1`` for the +y side of the street, ``-1`` for the -y side.
        setback: distance from the street's centre line (y = 0) to the building fronts.
        x_range: the row starts at ``x_range[0]`` and stops once it passes ``x_range[1]``.
        length, depth, height, gap: uniform ranges (metres) of each building's size and the gap after it.
        base_z: height of the ground the buildings stand on.

    Returns:
        The buildings' open3d meshes.
    """
    meshes = []
    x = x_range[0]
    while x < x_range[1]:
        size = (rng.uniform(*length), rng.uniform(*depth), rng.uniform(*height))
        meshes.append(box_mesh((x + size[0] / 2, side * (setback + size[1] / 2), base_z + size[2] / 2), size))
        x += size[0] + rng.uniform(*gap)
    return meshes


def spinning_lidar_directions(beams: int, azimuths: int,
                              elevation_deg: Tuple[float, float] = (-25.0, 3.0)) -> np.ndarray:
    """Unit ray directions ``[beams * azimuths, 3]`` (float64) of one sweep, beam-major.

    Beams are evenly spaced in elevation over ``elevation_deg`` (inclusive);
    azimuths evenly cover a full turn starting at -pi.
    """
    elevation, azimuth = np.meshgrid(np.deg2rad(np.linspace(*elevation_deg, beams)),
                                     np.linspace(-np.pi, np.pi, azimuths, endpoint=False), indexing='ij')
    return np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                     np.sin(elevation)], axis=-1).reshape(-1, 3)


class LidarSweep(NamedTuple):
    """One labelled sweep in the sensor frame (x forward, y left, z up; the ground lies at ``-sensor_height``).

    Attributes:
        points: ``[P, 4]`` float32 x, y, z, intensity (in [0, 1]).
        labels: ``[P]`` int64 index into :data:`STREET_CLASSES`.
        boxes: ``[M, 7]`` float32 vehicle boxes (x, y, z gravity centre, length, width, height, yaw in [-pi, pi)).
        box_points: ``[M]`` int64 points that hit each box's vehicle.
    """
    points: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    box_points: np.ndarray


class _Vehicle(NamedTuple):
    x: float
    y: float
    yaw: float
    length: float
    width: float
    height: float


def _vehicle_mesh(vehicle: _Vehicle, rng: np.random.Generator):
    """A car: a body box above the wheel clearance and a narrower cabin box on top, slightly to the rear."""
    body_top = vehicle.height * rng.uniform(0.55, 0.65)
    cabin_length = vehicle.length * rng.uniform(0.45, 0.6)
    heading = np.array([np.cos(vehicle.yaw), np.sin(vehicle.yaw)])
    cabin_xy = np.array([vehicle.x, vehicle.y]) - heading * vehicle.length * rng.uniform(0.0, 0.1)
    body = box_mesh((vehicle.x, vehicle.y, (VEHICLE_CLEARANCE_M + body_top) / 2),
                    (vehicle.length, vehicle.width, body_top - VEHICLE_CLEARANCE_M), vehicle.yaw)
    cabin = box_mesh((*cabin_xy, (body_top + vehicle.height) / 2),
                     (cabin_length, vehicle.width - 0.1, vehicle.height - body_top), vehicle.yaw)
    return body + cabin


def _place_vehicles(rng: np.random.Generator, kerbs: Tuple[float, float], extent: float) -> List[_Vehicle]:
    """Cars parked along both kerbs and driving in the lanes between, not overlapping each other or the sensor."""
    placed: List[_Vehicle] = []
    circles = [(0.0, 0.0, 2.6)]   # the sensor's own car

    def try_place(x, y, yaw):
        length, width, height = rng.uniform(3.9, 4.8), rng.uniform(1.7, 2.0), rng.uniform(1.4, 1.7)
        radius = np.hypot(length, width) / 2
        if all(np.hypot(x - cx, y - cy) >= radius + cr for cx, cy, cr in circles):
            circles.append((x, y, radius))
            placed.append(_Vehicle(x, y, yaw, length, width, height))

    right_kerb, left_kerb = kerbs
    for kerb, inward, forward in ((right_kerb, 1.0, 0.0), (left_kerb, -1.0, np.pi)):
        x = -extent + rng.uniform(0, 5)
        while x < extent:
            if rng.random() < 0.6:   # a parked car, mostly facing the traffic of its side
                yaw = forward + (np.pi if rng.random() < 0.2 else 0.0) + rng.normal(0, 0.05)
                try_place(x + 2.4, kerb + inward * rng.uniform(1.0, 1.3), yaw)
                x += 4.8 + rng.uniform(0.3, 2.5)
            else:
                x += rng.uniform(3.0, 15.0)
    for lane_y in np.arange(right_kerb + 4.0, left_kerb - 3.99, 3.5):   # lanes beyond the parking strips
        for x in rng.uniform(-extent, extent, rng.poisson(2 * extent / 30)):
            if rng.random() < 0.1:   # turning or manoeuvring
                yaw = rng.uniform(-np.pi, np.pi)
            else:   # right-hand traffic: lanes right of the sensor drive forward
                yaw = (0.0 if lane_y < 0 else np.pi) + rng.normal(0, 0.03)
            try_place(x, lane_y + rng.normal(0, 0.2), yaw)
    return placed


def _street_layout(rng: np.random.Generator, extent: float):
    """Labelled meshes of a random street along x: ``[(mesh, class index, vehicle index or -1)]`` and vehicles."""
    right_kerb, left_kerb = -rng.uniform(3.0, 9.0), rng.uniform(3.0, 9.0)
    sidewalks = rng.uniform(2.0, 5.0, size=2)
    ground = box_mesh((0.0, 0.0, -0.05), (2 * extent + 40, 2 * extent + 40, 0.1))
    for kerb, width, side in ((right_kerb, sidewalks[0], -1), (left_kerb, sidewalks[1], 1)):
        ground += box_mesh((0.0, kerb + side * (width + 20) / 2, SIDEWALK_HEIGHT_M / 2),
                           (2 * extent + 40, width + 20, SIDEWALK_HEIGHT_M))
    buildings, poles = [], []
    for kerb, width, side in ((right_kerb, sidewalks[0], -1), (left_kerb, sidewalks[1], 1)):
        buildings += building_row(rng, side, abs(kerb) + width, x_range=(-extent - 10, extent + 10),
                                  length=(8.0, 25.0), height=(4.0, 20.0), gap=(1.0, 10.0), base_z=SIDEWALK_HEIGHT_M)
        x = -extent + rng.uniform(0, 10)
        while x < extent:
            height, y = rng.uniform(3.5, 9.0), kerb + side * rng.uniform(0.4, 0.8)
            poles.append(pole_mesh(x, y, rng.uniform(0.08, 0.2), height, base_z=SIDEWALK_HEIGHT_M))
            if rng.random() < 0.5:   # a street light's arm reaching over the road
                poles.append(box_mesh((x, y - side * 0.9, SIDEWALK_HEIGHT_M + height - 0.1), (0.15, 1.8, 0.12)))
            x += rng.uniform(8.0, 25.0)
    vehicles = _place_vehicles(rng, (right_kerb, left_kerb), extent)
    labelled = [(ground, 0, -1), (sum(buildings[1:], buildings[0]), 3, -1), (sum(poles[1:], poles[0]), 2, -1)]
    labelled += [(_vehicle_mesh(vehicle, rng), 1, index) for index, vehicle in enumerate(vehicles)]
    return labelled, vehicles


def simulate_street_sweep(rng: np.random.Generator, beams: int = 32, azimuths: int = 1024,
                          elevation_deg: Tuple[float, float] = (-25.0, 3.0), max_range: float = 50.0,
                          range_noise: float = 0.02, sensor_height: float = 1.8,
                          min_points_per_box: int = 5) -> LidarSweep:
    """Scan a random street with a spinning LiDAR and label every return.

    The street runs roughly along the sensor's x axis (turned by up to 0.3 rad):
    a road between two kerbs 3-9 m from the sensor, raised sidewalks, rows of
    box buildings behind them, poles (some street lights with an arm) along the
    kerbs, cars (a body and a cabin box, 3.9-4.8 x 1.7-2.0 x 1.4-1.7 m) parked
    along both kerbs and driving in the lanes, some turning. Rays go out from
    the sensor ``sensor_height`` above the ground; a return keeps the class of
    the mesh it hit, gets Gaussian range noise and an intensity of the class's
    reflectivity times the cosine of the incidence angle.

    Args:
        rng: random generator; the sweep is a deterministic function of its state.
        beams: lasers, evenly spaced over ``elevation_deg``.
        azimuths: rays per laser over a full turn.
        elevation_deg: lowest and highest beam elevation, degrees.
        max_range: returns farther than this (metres) are dropped.
        range_noise: standard deviation of the range noise, metres.
        sensor_height: height of the sensor above the road.
        min_points_per_box: vehicles hit by fewer points get no box.

    Returns:
        A :class:`LidarSweep` in the sensor frame.
    """
    open3d = import_optional('open3d', 'open3d', 'simulated street scenes')

    extent = max_range + 10.0
    labelled, vehicles = _street_layout(rng, extent)
    scene = open3d.t.geometry.RaycastingScene()
    for mesh, _, _ in labelled:
        scene.add_triangles(open3d.t.geometry.TriangleMesh.from_legacy(mesh))
    geometry_class = np.array([label for _, label, _ in labelled])
    geometry_vehicle = np.array([vehicle for _, _, vehicle in labelled])

    directions = spinning_lidar_directions(beams, azimuths, elevation_deg)
    origin = np.array([0.0, 0.0, sensor_height])
    rays = np.concatenate([np.broadcast_to(origin, directions.shape), directions], axis=1).astype(np.float32)
    hits = scene.cast_rays(open3d.core.Tensor(rays))
    distance = hits['t_hit'].numpy().astype(np.float64)
    kept = np.isfinite(distance) & (distance < max_range)
    geometry = hits['geometry_ids'].numpy()[kept].astype(np.int64)
    normals = hits['primitive_normals'].numpy()[kept]
    directions, distance = directions[kept], distance[kept] + rng.normal(0.0, range_noise, kept.sum())
    labels = geometry_class[geometry]
    cosine = np.abs(np.einsum('ij,ij->i', normals, directions))
    intensity = np.clip(CLASS_REFLECTIVITY[labels] * cosine + rng.normal(0.0, 0.02, len(labels)), 0.0, 1.0)

    heading = rng.uniform(-0.3, 0.3)   # the street's direction in the sensor frame
    rotation = np.array([[np.cos(heading), -np.sin(heading)], [np.sin(heading), np.cos(heading)]])
    xyz = directions * distance[:, None]   # relative to the sensor
    xyz[:, :2] = xyz[:, :2] @ rotation.T
    points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)

    box_points = np.bincount(geometry_vehicle[geometry][labels == 1], minlength=len(vehicles))
    boxes = np.array([[v.x, v.y, v.height / 2 - sensor_height, v.length, v.width, v.height, v.yaw]
                      for v in vehicles], dtype=np.float64).reshape(-1, 7)
    boxes[:, :2] = boxes[:, :2] @ rotation.T
    boxes[:, 6] = (boxes[:, 6] + heading + np.pi) % (2 * np.pi) - np.pi
    seen = box_points >= min_points_per_box
    return LidarSweep(points, labels, boxes[seen].astype(np.float32), box_points[seen])
