"""The street scene the checks run on (shared by the steps, built once per run)."""
import sys

from .context import BENCHMARK_FOLDER, CheckContext

QUICK_SCENE = dict(sensor_x=(0,), beams=16, azimuths=512)   # one sweep, ~7k sites (sparse_unet.py --quick)
CPU_DRY_RUN_SCENE = dict(sensor_x=(0,), beams=8, azimuths=256)   # ~2k sites: the dry run checks the script, fast


def benchmark_modules_importable() -> None:
    """Puts ``tools/benchmark`` on ``sys.path`` (its scripts import each other as top-level modules)."""
    if str(BENCHMARK_FOLDER) not in sys.path:
        sys.path.insert(0, str(BENCHMARK_FOLDER))


def street_scene(context: CheckContext):
    """``(sites, note)``: the benchmarks' street scene (``--quick``: one small sweep; the CPU dry run: a smaller
    one); without open3d, its analytic stand-in, which the note says."""
    if 'scene' not in context.cache:
        benchmark_modules_importable()
        from scenes import street_scene_or_stand_in

        sizes = CPU_DRY_RUN_SCENE if not context.on_gpu else QUICK_SCENE if context.quick else {}
        context.cache['scene'] = street_scene_or_stand_in(**sizes)
    return context.cache['scene']


def scene_details(context: CheckContext) -> dict:
    sites, note = street_scene(context)
    return {'scene': sites.label, 'sites': int(sites.indices.shape[0]), 'scene_note': note}
