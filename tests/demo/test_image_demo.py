"""demo/image_demo.py: default run on the embedded digits, clean failures on bad input, large images."""
import json
import struct
import zlib
from pathlib import Path

import cv2
import pytest

DIGITS = Path(__file__).resolve().parents[2] / 'sparsevision' / 'demo_data' / 'digits'


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


def test_a_large_image_is_reduced_as_it_is_read(run_with_peak_rss, tmp_path):
    digit = cv2.imread(str(DIGITS / 'digit3_sample23.png'), cv2.IMREAD_GRAYSCALE)
    large = cv2.resize(digit, (8000, 8000), interpolation=cv2.INTER_CUBIC)
    assert cv2.imwrite(str(tmp_path / 'large.png'), large)
    reduced = cv2.resize(large, (4096, 4096), interpolation=cv2.INTER_AREA)   # LARGE_IMAGE_SIDE
    assert cv2.imwrite(str(tmp_path / 'reduced.png'), reduced)
    del large, reduced
    result, peak = run_with_peak_rss(['demo/image_demo.py', tmp_path / 'large.png', tmp_path / 'reduced.png',
                                      '--out-dir', tmp_path / 'out'])
    assert result.returncode == 0, result.stderr[-3000:]
    # The demo alone peaks near 0.95 GiB; decoding the image whole as float32 and drawing it took 4 GiB.
    assert peak < 1.25 * 2**30, f'peak resident memory {peak / 2**30:.2f} GiB'
    large_prediction, reduced_prediction = json.loads((tmp_path / 'out' / 'image_demo.json').read_text())['predictions']
    assert large_prediction['scores'] == reduced_prediction['scores']
    assert large_prediction['pred_class'] == '3'


def png_header(width, height):
    """The start of a grey PNG file of ``width`` x ``height`` pixels: enough for its header to be read."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(bytes(16))))


def test_an_image_with_too_many_pixels_is_refused_before_decoding(python_process, tmp_path):
    (tmp_path / 'huge.png').write_bytes(png_header(12_000, 12_000))
    result = python_process(['demo/image_demo.py', tmp_path / 'huge.png', '--out-dir', tmp_path / 'out'])
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if 'image_demo: error' in line]
    assert len(lines) == 1 and '12000 x 12000 = 144,000,000 pixels, more than the 134,217,728' in lines[0]
    assert not (tmp_path / 'out').exists()


def test_image_size_reads_the_header_only(tmp_path):
    from sparsevision.apis.image_classification import image_size

    (tmp_path / 'wide.png').write_bytes(png_header(300, 20))
    assert image_size(tmp_path / 'wide.png') == (300, 20)
    (tmp_path / 'bomb.png').write_bytes(png_header(20_000, 20_000))   # beyond PIL's own limit too
    with pytest.raises(ValueError, match='has over .* pixels, more than the 134,217,728'):
        image_size(tmp_path / 'bomb.png')
    (tmp_path / 'text.png').write_text('no image')
    assert image_size(tmp_path / 'text.png') is None   # OpenCV then says it cannot decode it
