import cv2
import numpy as np
import pytest
from PIL import Image

from reconstruct.errors import ImageReadError, InputError
from reconstruct.images import list_images, prefetch, read_image, resize_long_side


def _texture(h=60, w=80):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_list_images_recursive_sorted_skips_non_images(tmp_path, caplog):
    for name in ["b/x.jpg", "a/x.jpg", "z.PNG", "notes.txt", ".hidden/y.jpg", "sub/.z.png"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    with caplog.at_level("WARNING"):
        names = list_images(tmp_path)
    assert names == ["a/x.jpg", "b/x.jpg", "z.PNG"]  # duplicates across folders stay distinct
    assert "notes.txt" in caplog.text


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(InputError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "f.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="not a folder"):
        list_images(tmp_path / "f.jpg")


def test_corrupt_truncated_and_empty_jpeg(tmp_path):
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), _texture())
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_bytes(b"hello")
    assert read_image(good).shape == (60, 80, 3)
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "trunc.jpg")
    for name in ["garbage.jpg", "empty.png", "text.png"]:
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)


def test_bit_depths_and_channels(tmp_path):
    img16 = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), img16)
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (40, 50, 3)
    np.testing.assert_array_equal(out[..., 0], (img16 >> 8).astype(np.uint8))

    gray = _texture()[..., 0]
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png")[..., 1], gray)

    rgba = np.dstack([_texture(), np.full((60, 80), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (60, 80, 3)
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_exif_orientation_is_applied(tmp_path):
    yy, xx = np.mgrid[0:60, 0:80]
    rgb = np.dstack([xx * 3, yy * 4, np.full_like(xx, 128)]).astype(np.uint8)  # smooth: JPEG-safe
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif, quality=98)
    out = read_image(tmp_path / "rot.jpg")
    assert out.shape == (80, 60, 3)
    expected = np.rot90(rgb, -1)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 3


def test_tiny_image_is_rejected(tmp_path):
    cv2.imwrite(str(tmp_path / "tiny.png"), _texture(20, 200))
    with pytest.raises(ImageReadError, match="too small"):
        read_image(tmp_path / "tiny.png")


def test_resize_long_side_never_upscales():
    img = np.zeros((300, 400, 3), np.uint8)
    small, scale = resize_long_side(img, 200)
    assert small.shape == (150, 200, 3) and scale == 0.5
    same, scale = resize_long_side(img, 1000)
    assert same is img and scale == 1.0


def test_prefetch_keeps_order_and_hands_back_errors():
    def fn(x):
        if x == 3:
            raise ValueError("three")
        return x * 10

    out = list(prefetch(fn, range(6), workers=2, lookahead=2))
    assert [i for i, _ in out] == list(range(6))
    assert [r for i, r in out if i != 3] == [0, 10, 20, 40, 50]
    assert isinstance(out[3][1], ValueError)


def test_prefetch_reads_its_items_lazily_and_keeps_none_items():
    pulled = []

    def items():
        for i in range(10):
            pulled.append(i)
            yield i

    it = prefetch(lambda x: x, items(), workers=2, lookahead=2)
    assert next(it) == (0, 0)
    assert len(pulled) <= 4  # the one yielded plus at most lookahead + 1 in flight
    assert [i for i, _ in it] == list(range(1, 10))
    # None is an item like any other, not the end of the stream
    out = list(prefetch(lambda x: x, [1, 2, None, 3], workers=1, lookahead=1))
    assert out == [(1, 1), (2, 2), (None, None), (3, 3)]
