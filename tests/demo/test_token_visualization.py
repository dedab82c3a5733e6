"""Token maps of token-pruning ViTs (sparsevision.apis.token_visualization) and their use in demo/image_demo.py."""
import importlib.util
import json

import numpy as np
import pytest
import torch

from sparsevision.apis import ImageClassificationInferencer
from sparsevision.apis.token_visualization import (DROPPED_RGBA, MERGED_ALPHA, draw_token_routing, merge_outlines,
                                                   patch_overlay, save_token_maps, stage_caption,
                                                   trace_token_routing)
from sparsevision.model_zoo import create_model, load_config

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
METHODS = ('evit', 'tome', 'dynamicvit', 'spatten')


@pytest.fixture(scope='module')
def untrained_inferencer(repo_root):
    """``inferencer(method)``: an untrained digits model of that method (independent of shipped weights)."""
    built = {}

    def build(method):
        if method not in built:
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(repo_root)   # DynamicViT's teacher checkpoint path is relative to the repository
                torch.manual_seed(0)
                built[method] = ImageClassificationInferencer(f'{method}_vit_tiny_p4_digits', checkpoint=None)
        return built[method]
    return build


@pytest.fixture(scope='module')
def digit_files(repo_root):
    return sorted((repo_root / 'sparsevision/demo_data/digits').glob('*.png'))[:2]


@pytest.fixture(scope='module')
def untrained_tome_checkpoint(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp('checkpoints') / 'untrained_tome.pth'
    torch.save(create_model('tome_vit_tiny_p4_digits').state_dict(), checkpoint)
    return checkpoint


@pytest.fixture(scope='module')
def image_demo(repo_root):
    spec = importlib.util.spec_from_file_location('image_demo', repo_root / 'demo/image_demo.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('method', METHODS)
def test_one_png_per_image_with_a_panel_per_stage(untrained_inferencer, digit_files, method, tmp_path):
    inferencer = untrained_inferencer(method)
    with torch.no_grad():
        _, state = inferencer.model.backbone.forward_with_state(
            inferencer.collate(inferencer.prepare(digit_files))['inputs'])
    assert len(state.history) == (6 if method == 'tome' else 3)
    predictions = inferencer(digit_files)
    paths = save_token_maps(inferencer, digit_files, predictions, tmp_path, titles=[f.stem for f in digit_files])
    assert [path.name for path in paths] == [f'{index:02d}_{f.stem}.png' for index, f in enumerate(digit_files)]
    assert sorted(tmp_path.iterdir()) == paths   # no temporary files left behind
    assert all(path.read_bytes()[:8] == PNG_SIGNATURE for path in paths)
    routings = trace_token_routing(inferencer, digit_files)
    for index, routing in enumerate(routings):
        assert [carriers.tolist() for carriers in routing.carriers] == \
            [stage[index].reshape(8, 8).tolist() for stage in state.history]
        figure = draw_token_routing(routing, predictions[index])
        assert len(figure.axes) == len(state.history) + 1
        tokens = len(set(state.history[-1][index].tolist()) - {-1})
        assert figure.axes[-1].get_title().startswith(f'stage {len(state.history)}: {tokens} tokens')
        assert predictions[index]['pred_class'] in figure.get_suptitle()


def test_tome_panels_mark_merged_groups(untrained_inferencer, digit_files):
    inferencer = untrained_inferencer('tome')
    routing = trace_token_routing(inferencer, digit_files[:1])[0]
    carriers = routing.carriers[-1]
    overlay = patch_overlay(carriers)
    rows, sizes = np.unique(carriers, return_counts=True)
    assert (carriers >= 0).all() and (sizes > 1).any()
    group_colours = []
    for row, size in zip(rows, sizes):
        colours = {tuple(colour) for colour in overlay[carriers == row]}
        assert len(colours) == 1
        colour = colours.pop()
        assert colour[3] == (MERGED_ALPHA if size > 1 else 0)
        if size > 1:
            group_colours.append(colour)
    assert len(set(group_colours)) == min(len(group_colours), 20)   # distinct colours while the palette lasts
    figure = draw_token_routing(routing, inferencer(digit_files[:1])[0])
    outlines = [collection for collection in figure.axes[-1].collections if len(collection.get_segments())]
    assert len(outlines) == 1 and len(outlines[0].get_segments()) == len(merge_outlines(carriers)) > 0


def test_outlines_overlay_and_caption_of_a_known_stage():
    carriers = np.array([[5, 5, 7],
                         [-1, 9, 9]])
    # token 5 (top left pair) and token 9 (bottom right pair): two 1x2 perimeters sharing one edge
    assert sorted(merge_outlines(carriers)) == sorted([
        ((0, 0), (1, 0)), ((1, 0), (2, 0)), ((0, 1), (1, 1)), ((1, 1), (2, 1)), ((0, 0), (0, 1)), ((2, 0), (2, 1)),
        ((2, 1), (3, 1)), ((1, 2), (2, 2)), ((2, 2), (3, 2)), ((1, 1), (1, 2)), ((3, 1), (3, 2))])
    overlay = patch_overlay(carriers)
    assert tuple(overlay[1, 0]) == DROPPED_RGBA and overlay[0, 2, 3] == 0
    assert tuple(overlay[0, 0]) == tuple(overlay[0, 1]) != tuple(overlay[1, 1]) == tuple(overlay[1, 2])
    assert stage_caption(carriers) == '3 tokens\n1 patch dropped\n4 patches in 2 merged tokens'
    assert stage_caption(np.arange(4).reshape(2, 2)) == '4 tokens\nall patches kept'


def test_rgb_photo_and_other_grid_size(digit_files, tmp_path):
    cfg = load_config('evit_vit_tiny_p4_digits')
    cfg.model.backbone.update(img_size=48, patch_size=8, in_chans=3)
    cfg.model.data_preprocessor.update(mean=[0.3] * 3, std=[0.4] * 3)
    cfg.test_dataloader.dataset.pipeline[0].size = 48
    inferencer = ImageClassificationInferencer(cfg, checkpoint=None)
    images = [inferencer.sample_photo('chelsea'), digit_files[0]]
    assert images[0].shape == (48, 48, 3) and images[0].dtype == np.float32 and 0 <= images[0].min() < 1
    routings = trace_token_routing(inferencer, images)
    assert [routing.pixels.shape for routing in routings] == [(48, 48, 3)] * 2
    assert all(carriers.shape == (6, 6) for routing in routings for carriers in routing.carriers)
    paths = save_token_maps(inferencer, images, inferencer(images), tmp_path)
    assert [path.name for path in paths] == ['00_image0.png', '01_image1.png']


def test_trace_refuses_a_model_that_does_not_route_tokens(digit_files):
    inferencer = ImageClassificationInferencer('resnet18_w16_digits', checkpoint=None)
    with pytest.raises(ValueError, match='token-pruning backbone'):
        trace_token_routing(inferencer, digit_files)


def test_demo_writes_token_maps_for_a_file_and_a_photo(image_demo, untrained_tome_checkpoint, digit_files,
                                                       tmp_path, capsys):
    out_dir = tmp_path / 'out'
    status = image_demo.main([str(digit_files[0]), '--photo', 'astronaut', '--model', 'tome_vit_tiny_p4_digits',
                              '--checkpoint', str(untrained_tome_checkpoint), '--out-dir', str(out_dir)])
    assert status == 0, capsys.readouterr().err[-3000:]
    predictions = json.loads((out_dir / 'image_demo.json').read_text())['predictions']
    assert [p['image'] for p in predictions] == [str(digit_files[0]), 'astronaut']
    token_maps = sorted((out_dir / 'token_maps').iterdir())
    assert [p['token_map'] for p in predictions] == [str(path) for path in token_maps]
    assert [path.name for path in token_maps] == [f'00_{digit_files[0].stem}.png', '01_astronaut.png']
    assert all(path.read_bytes()[:8] == PNG_SIGNATURE for path in token_maps)


def test_help_says_photo_predictions_are_meaningless(image_demo, capsys):
    with pytest.raises(SystemExit):
        image_demo.parse_args(['--help'])
    assert 'predictions on photos are meaningless' in ' '.join(capsys.readouterr().out.split())


@pytest.mark.parametrize('arguments, message', [
    (['missing.png'], 'image file(s) not found: missing.png'),
    (['--photo', 'moon_landing'], "unknown photo 'moon_landing'; choose one of astronaut, coffee, chelsea, rocket"),
])
def test_bad_input_fails_with_one_line_and_no_outputs(image_demo, untrained_tome_checkpoint, tmp_path, arguments,
                                                      message):
    out_dir = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_info:
        image_demo.main([*arguments, '--model', 'tome_vit_tiny_p4_digits', '--checkpoint',
                         str(untrained_tome_checkpoint), '--out-dir', str(out_dir)])
    assert exit_info.value.code == f'image_demo: error: {message}'
    assert not out_dir.exists()
