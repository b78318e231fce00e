"""Image decoding and preprocessing: supported encodings, and clear errors for bad input."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vpr_ros.errors import ImageError
from vpr_ros.images import check_rgb, compressed_to_rgb, raw_to_rgb
from vpr_ros.runtime.preprocess import preprocess, preprocess_batch

from conftest import random_image


def test_rgb8_bgr8_and_padded_rows():
    rgb = random_image(7, 5)
    assert np.array_equal(raw_to_rgb("rgb8", 7, 5, 15, False, rgb.tobytes()), rgb)
    bgr = rgb[:, :, ::-1].copy()
    assert np.array_equal(raw_to_rgb("bgr8", 7, 5, 15, False, bgr.tobytes()), rgb)
    padded = np.zeros((7, 20), np.uint8)
    padded[:, :15] = rgb.reshape(7, 15)
    assert np.array_equal(raw_to_rgb("rgb8", 7, 5, 20, False, padded.tobytes()), rgb)


def test_mono_16bit_and_bayer_become_rgb():
    mono = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = raw_to_rgb("mono8", 3, 4, 4, False, mono.tobytes())
    assert out.shape == (3, 4, 3) and np.array_equal(out[:, :, 1], mono)
    m16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    out16 = raw_to_rgb("mono16", 3, 4, 8, False, m16.astype("<u2").tobytes())
    assert out16.dtype == np.uint8 and np.array_equal(out16[:, :, 0], (m16 >> 8).astype(np.uint8))
    big = raw_to_rgb("mono16", 3, 4, 8, True, m16.astype(">u2").tobytes())
    assert np.array_equal(big, out16)
    bayer = np.full((4, 4), 128, np.uint8)
    assert raw_to_rgb("bayer_rggb8", 4, 4, 4, False, bayer.tobytes()).shape == (4, 4, 3)


@pytest.mark.parametrize("args,needle", [
    (("yuv_weird", 2, 2, 6, False, b"\0" * 12), "unsupported image encoding 'yuv_weird'"),
    (("rgb8", 0, 0, 0, False, b""), "empty image"),
    (("rgb8", 4, 4, 12, False, b"\0" * 20), "too short"),
    (("rgb8", 4, 4, 8, False, b"\0" * 64), "step 8 is smaller"),
    (("rgb8", 100_000, 100_000, 300_000, False, b""), "too large"),
])
def test_bad_raw_images_raise_image_error(args, needle):
    with pytest.raises(ImageError, match=needle):
        raw_to_rgb(*args)


def test_compressed_ok_truncated_and_garbage():
    rgb = random_image(32, 48)
    ok, jpg = cv2.imencode(".jpg", rgb[:, :, ::-1])
    assert ok
    out = compressed_to_rgb("jpeg", jpg.tobytes())
    assert out.shape == (32, 48, 3) and np.abs(out.astype(int) - rgb).mean() < 60
    with pytest.raises(ImageError, match="truncated JPEG"):
        compressed_to_rgb("jpeg", jpg.tobytes()[: len(jpg) // 2])
    ok, png = cv2.imencode(".png", rgb)
    with pytest.raises(ImageError, match="truncated PNG"):
        compressed_to_rgb("png", png.tobytes()[:-30])
    with pytest.raises(ImageError, match="cannot decode"):
        compressed_to_rgb("jpeg", b"definitely not an image")
    with pytest.raises(ImageError, match="empty compressed"):
        compressed_to_rgb("jpeg", b"")


def test_check_rgb_rejects_nan_wrong_shape_and_empty():
    with pytest.raises(ImageError, match="NaN"):
        check_rgb(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ImageError, match="shape"):
        check_rgb(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match="empty"):
        check_rgb(np.zeros((0, 4, 3), np.uint8))


def test_preprocess_normalises_and_resizes():
    img = np.full((120, 160, 3), (124, 116, 104), np.uint8)  # ~ ImageNet mean
    x = preprocess(img, 56)
    assert x.shape == (3, 56, 56) and x.dtype == np.float32
    assert np.abs(x).max() < 0.02
    white = preprocess(np.full((10, 10, 3), 255, np.uint8), 28)
    assert np.allclose(white[0], (1 - 0.485) / 0.229, atol=1e-5)
    assert preprocess_batch([img, img], 28).shape == (2, 3, 28, 28)


@pytest.mark.parametrize("encoding,dtype,value", [
    ("32FC1", np.float32, 1.5), ("16UC1", np.uint16, 300), ("16SC1", np.int16, -1), ("8SC1", np.int8, -1),
    ("32SC1", np.int32, 7), ("64FC1", np.float64, np.nan), ("32FC3", np.float32, 0.5),
])
def test_depth_signed_and_float_encodings_are_not_camera_images(encoding, dtype, value):
    """They used to be cast to uint8 without scaling (1.5 -> 1, 300 -> 44, NaN -> 0, -1 -> 255)."""
    ch = int(encoding[-1])
    a = np.full((2, 3, ch), value, dtype)
    with pytest.raises(ImageError, match=f"encoding '{encoding}'.*(depth|signed or floating)"):
        raw_to_rgb(encoding, 2, 3, 3 * ch * a.itemsize, False, a.tobytes())


def test_every_accepted_camera_encoding_decodes():
    from vpr_ros.images import CAMERA_ENCODINGS

    for enc, (typestr, ch, _) in CAMERA_ENCODINGS.items():
        dt = np.dtype(typestr)
        a = (np.arange(4 * 6 * ch) % 200).astype(dt).reshape(4, 6, ch)
        out = raw_to_rgb(enc, 4, 6, 6 * ch * dt.itemsize, False, a.tobytes())
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8, enc


def test_depth_decoder_gives_metres_with_invalid_pixels_as_nan():
    from vpr_ros.images import depth_to_metres

    mm = np.array([[0, 1500], [65535, 250]], np.uint16)
    d = depth_to_metres("16UC1", 2, 2, 4, False, mm.tobytes())
    assert np.isnan(d[0, 0]) and d[0, 1] == pytest.approx(1.5) and d[1, 1] == pytest.approx(0.25)
    m = np.array([[np.nan, 2.0], [-1.0, np.inf]], np.float32)
    d = depth_to_metres("32FC1", 2, 2, 8, False, m.tobytes())
    assert d[0, 1] == 2.0 and np.isnan(d[[0, 1, 1], [0, 0, 1]]).all()
    with pytest.raises(ImageError, match="not a depth encoding"):
        depth_to_metres("rgb8", 2, 2, 6, False, b"\0" * 12)


def test_image_files_go_through_the_same_checks(tmp_path):
    from vpr_ros.images import read_image_file

    rgb = random_image(16, 16)
    ok, jpg = cv2.imencode(".jpg", rgb[:, :, ::-1])
    (tmp_path / "ok.jpg").write_bytes(jpg.tobytes())
    (tmp_path / "cut.jpg").write_bytes(jpg.tobytes()[:100])
    assert read_image_file(tmp_path / "ok.jpg").shape == (16, 16, 3)
    with pytest.raises(ImageError, match="cut.jpg: truncated JPEG"):
        read_image_file(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="missing.jpg: cannot read"):
        read_image_file(tmp_path / "missing.jpg")
