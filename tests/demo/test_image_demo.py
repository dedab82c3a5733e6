"""demo/image_demo.py: default run on the embedded digits, and clean failures on bad input."""
import json

import pytest


def test_default_run_classifies_embedded_digits(python_process, tmp_path):
    result = python_process(['demo/image_demo.py', '--out-dir', tmp_path])
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads((tmp_path / 'image_demo.json').read_text())['predictions']
    assert len(predictions) == 10
    correct = sum(p['pred_class'] == p['image'].rsplit('digit', 1)[1][0] for p in predictions)
    assert correct >= 9, predictions
    assert (tmp_path / 'image_demo.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('make_input, message', [
    (lambda d: d / 'missing.png', 'not found'),
    (lambda d: (d / 'text.png').write_text('no image') and d / 'text.png', 'could not decode'),
])
def test_bad_input_fails_with_one_line_and_no_outputs(python_process, tmp_path, make_input, message):
    out_dir = tmp_path / 'out'
    result = python_process(['demo/image_demo.py', make_input(tmp_path), '--out-dir', out_dir])
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if 'image_demo: error' in line]
    assert len(lines) == 1 and message in lines[0]
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_checkpoint_of_another_model(python_process, tmp_path, repo_root):
    weights = repo_root / 'sparsevision/model_zoo/weights/vit_tiny_p4_digits.pth'
    result = python_process(['demo/image_demo.py', '--checkpoint', weights, '--out-dir', tmp_path / 'out'])
    assert result.returncode == 1 and 'does not fit ImageClassifier' in result.stderr
