"""Every zoo model given to every demo either runs (its input fits the demo) or is refused with one error line
that names the models the demo runs; and a run's outputs (PNG, JSON, token maps) are written whole or not at all."""
import importlib.util
import json
import os
import signal
import time

import numpy as np
import pytest
import torch

from sparsevision import list_models
from sparsevision.model_zoo import create_model, pretrained_weights

DEMOS = ('image_demo', 'pcd_demo', 'masked_reconstruction_demo')
# What each demo runs; every other zoo model must be refused.
FITS = {
    'image_demo': {'resnet18_w16_digits', 'resnet18_w16_digits_10labels_from_spark', 'vit_tiny_p4_digits',
                   'meta_spikeformer_tiny_digits', 'dynamicvit_vit_tiny_p4_digits', 'evit_vit_tiny_p4_digits',
                   'spatten_vit_tiny_p4_digits', 'tome_vit_tiny_p4_digits', 'dinat_digits'},
    'pcd_demo': {'sparse_unet_lidar_scenes', 'centerpoint_second_lidar_scenes', 'sparse_resnet_shapes',
                 'e3dsnn_shapes'},
    'masked_reconstruction_demo': {'spark_resnet18_w16_digits', 'spark_resnet18_w16_photos',
                                   'fcmae_convnextv2_atto_digits'},
}
OUTPUTS = {'image_demo': 'image_demo.json', 'pcd_demo': 'pcd_demo.json',
           'masked_reconstruction_demo': 'masked_reconstruction.json'}
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def demos(repo_root):
    """Each demo script as a module, so its ``main(argv)`` runs in this process."""
    modules = {}
    for name in DEMOS:
        spec = importlib.util.spec_from_file_location(name, repo_root / 'demo' / f'{name}.py')
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    return modules


@pytest.fixture(scope='module')
def sphere_cloud(tmp_path_factory):
    """2,000 points on a 0.5 m sphere 10 m ahead of the sensor, as a .npy file."""
    directions = np.random.default_rng(0).normal(size=(2000, 3))
    points = 0.5 * directions / np.linalg.norm(directions, axis=1, keepdims=True) + [10.0, 0.0, 0.0]
    path = tmp_path_factory.mktemp('clouds') / 'sphere.npy'
    np.save(path, points.astype(np.float32))
    return path


@pytest.fixture
def digits(repo_root):
    return [str(path) for path in sorted((repo_root / 'sparsevision/demo_data/digits').glob('*.png'))[:2]]


def checkpoint_of(name, directory):
    """The shipped weights, or for a model without any, untrained weights saved to ``directory``."""
    if pretrained_weights(name):
        return 'zoo'
    torch.manual_seed(0)
    path = directory / f'untrained_{name}.pth'
    torch.save(create_model(name).state_dict(), path)
    return str(path)


def demo_inputs(demo, digits, sphere_cloud):
    return {'image_demo': digits, 'pcd_demo': [str(sphere_cloud)], 'masked_reconstruction_demo': []}[demo]


def refusal(demo_main, argv) -> str:
    """The one-line message with which ``demo_main(argv)`` exits."""
    with pytest.raises(SystemExit) as exit_info:
        demo_main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and '\n' not in message, message
    return message


PAIRS = [(demo, model) for demo in DEMOS for model in list_models()]


def test_every_model_named_as_fitting_is_in_the_zoo():
    assert set().union(*FITS.values()) <= set(list_models())


@pytest.mark.parametrize('demo, model', [(demo, model) for demo, model in PAIRS if model not in FITS[demo]])
def test_a_model_that_does_not_fit_the_demo_is_refused_in_one_line(demos, demo, model, digits, sphere_cloud,
                                                                   tmp_path):
    out_dir = tmp_path / 'out'
    message = refusal(demos[demo].main, [*demo_inputs(demo, digits, sphere_cloud), '--model', model,
                                         '--out-dir', str(out_dir)])
    assert message.startswith(f'{demo}: error: {model} is a') and 'cannot run' in message
    assert all(name in message for name in FITS[demo]), message
    assert all(f'demo/{other}.py' in message for other in DEMOS if model in FITS[other]), message
    assert not out_dir.exists()


@pytest.mark.parametrize('demo, model', [(demo, model) for demo, model in PAIRS if model in FITS[demo]])
def test_a_model_that_fits_the_demo_runs(demos, demo, model, digits, sphere_cloud, repo_root, tmp_path, monkeypatch,
                                         capsys):
    monkeypatch.chdir(repo_root)   # DynamicViT's teacher checkpoint path is relative to the repository
    out_dir = tmp_path / 'out'
    checkpoint = checkpoint_of(model, tmp_path)
    assert demos[demo].main([*demo_inputs(demo, digits, sphere_cloud), '--model', model, '--checkpoint', checkpoint,
                             '--out-dir', str(out_dir)]) == 0
    assert 'wrote' in capsys.readouterr().out
    record = json.loads((out_dir / OUTPUTS[demo]).read_text())
    pngs = sorted(out_dir.rglob('*.png'))
    assert pngs and all(path.read_bytes()[:8] == PNG_SIGNATURE for path in pngs)
    assert not [path for path in out_dir.iterdir() if path.name.startswith('.')]   # no staging folder left
    trained = checkpoint == 'zoo'
    if demo == 'image_demo':   # the embedded digits 0 and 1
        classes = [prediction['pred_class'] for prediction in record['predictions']]
        assert len(classes) == 2 and (classes == ['0', '1'] or not trained), classes
    elif demo == 'pcd_demo':
        summary = record['predictions'][0][model]
        assert summary, record
        if model == 'sparse_resnet_shapes':
            assert summary['pred_class'] == 'sphere' and summary['pred_score'] > 0.9, summary
    else:
        assert 0 < record['images'][0]['hidden_share'] < 1


def test_a_refused_model_gives_one_stderr_line_and_no_traceback(python_process, tmp_path):
    result = python_process(['demo/pcd_demo.py', '--model', 'resnet18_w16_digits', '--out-dir', tmp_path / 'out'])
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    lines = [line for line in result.stderr.splitlines() if 'error' in line]
    assert len(lines) == 1 and lines[0].startswith('pcd_demo: error: resnet18_w16_digits is an image classifier')
    assert 'demo/image_demo.py' in lines[0] and 'sparse_unet_lidar_scenes' in lines[0]
    assert not (tmp_path / 'out').exists()


def test_a_failed_json_leaves_the_previous_outputs_untouched(demos, digits, tmp_path, monkeypatch):
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    (out_dir / 'image_demo.png').write_bytes(b'previous run')

    def full_disk(*args, **kwargs):
        raise OSError('No space left on device')
    monkeypatch.setattr('sparsevision.apis.image_classification.write_json_atomically', full_disk)
    message = refusal(demos['image_demo'].main, [*digits, '--out-dir', str(out_dir)])
    assert message == 'image_demo: error: No space left on device'
    assert [path.name for path in out_dir.iterdir()] == ['image_demo.png']
    assert (out_dir / 'image_demo.png').read_bytes() == b'previous run'


def test_a_failed_run_into_a_new_folder_leaves_no_folder(demos, digits, tmp_path, monkeypatch):
    def failing_figure(*args, **kwargs):
        raise RuntimeError('matplotlib backend broke')
    monkeypatch.setattr('sparsevision.apis.ImageClassificationInferencer.visualize', failing_figure)
    out_dir = tmp_path / 'new' / 'out'
    assert refusal(demos['image_demo'].main, [*digits, '--out-dir', str(out_dir)]).endswith('backend broke')
    assert not out_dir.exists()


def test_sigterm_while_writing_leaves_no_partial_files(demos, digits, tmp_path, monkeypatch):
    """SIGTERM while the JSON is half written (the PNG already is): neither stays, nor any ``.partial`` file."""
    received = []

    def record(signum, frame):   # stands in for the default action, which would end pytest
        received.append(signum)
    previous = signal.signal(signal.SIGTERM, record)
    real_dumps = json.dumps

    def dumps_then_terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)   # the handler runs here
        return real_dumps(*args, **kwargs)
    monkeypatch.setattr(json, 'dumps', dumps_then_terminated)
    out_dir = tmp_path / 'out'
    try:
        with pytest.raises(SystemExit) as exit_info:
            demos['image_demo'].main([*digits, '--out-dir', str(out_dir)])
        assert signal.getsignal(signal.SIGTERM) is record   # the handler from before the run is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_info.value.code == 128 + signal.SIGTERM and received == []
    assert not out_dir.exists()
    assert list(tmp_path.rglob('*')) == []


def test_token_maps_of_an_earlier_run_are_replaced_not_kept(demos, digits, tmp_path, monkeypatch, repo_root):
    out_dir = tmp_path / 'out'
    (out_dir / 'token_maps').mkdir(parents=True)
    for name in ('00_old_digit.png', '07_gone.png'):
        (out_dir / 'token_maps' / name).write_bytes(b'earlier run')
    (out_dir / 'token_maps' / 'notes.txt').write_text('not a token map')
    image_demo = demos['image_demo']
    assert image_demo.main([digits[0], '--model', 'evit_vit_tiny_p4_digits', '--out-dir', str(out_dir)]) == 0
    written = sorted(path.name for path in (out_dir / 'token_maps').iterdir())
    stem = os.path.splitext(os.path.basename(digits[0]))[0]
    assert written == [f'00_{stem}.png', 'notes.txt']
    predictions = json.loads((out_dir / 'image_demo.json').read_text())['predictions']
    assert predictions[0]['token_map'] == str(out_dir / 'token_maps' / f'00_{stem}.png')

    assert image_demo.main([digits[0], '--out-dir', str(out_dir)]) == 0   # a ResNet writes no token maps
    assert sorted(path.name for path in (out_dir / 'token_maps').iterdir()) == ['notes.txt']
    assert 'token_map' not in json.loads((out_dir / 'image_demo.json').read_text())['predictions'][0]
