import cv2
import numpy as np
import pytest
from PIL import Image

from reconstruct.errors import ImageReadError, InputError
from reconstruct.images import (
    _read_reduced,
    list_images,
    prefetch,
    read_gray_downsized,
    read_image,
    resize_long_side,
)


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


def _pattern(w, h):
    """A smooth RGB picture with a bright block near the top-left corner: any flip or quarter
    turn of it differs from it by far more than the decoders do."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([255 * x / w, 255 * y / h, 128 + 60 * np.sin(x / 97 + y / 61)], axis=-1)
    rgb[h // 10 : h // 3, w // 12 : w // 4] = (250, 250, 40)
    return rgb.astype(np.uint8)


def _full_decode_gray(path, max_size):
    """Full RGB decode, gray, resize: what `read_gray_downsized` must equal."""
    gray = cv2.cvtColor(read_image(path), cv2.COLOR_RGB2GRAY)
    scale = max_size / max(gray.shape)
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize(
    ("size", "orientation", "progressive"),
    [
        ((2601, 1701), None, False),  # reduced by 4: ceil(2601 / 4) = 651 >= 640
        ((2601, 1701), 6, False),  # EXIF: displayed turned by 90 degrees clockwise
        ((2601, 1701), 8, True),  # EXIF: turned by 270, progressive JPEG
        ((1301, 977), 3, False),  # reduced by 2, EXIF: turned by 180
        ((1701, 5300), 5, False),  # portrait, reduced by 8; EXIF: transposed
    ],
)
def test_reduced_decode_has_the_frame_and_size_of_the_full_decode(
    tmp_path, size, orientation, progressive
):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(_pattern(*size)).save(path, exif=exif, quality=95, progressive=progressive)
    expected = _full_decode_gray(path, 640)
    reduced = _read_reduced(path, 640)
    assert reduced is not None  # the reduced decode was used
    full_shape = read_image(path).shape[:2]
    assert reduced[1] == full_shape and min(reduced[0].shape) < min(full_shape)
    gray = read_gray_downsized(path, 640)
    assert gray.shape == expected.shape and gray.dtype == np.uint8
    # same pixel frame: the DCT-scaled decode differs from the full one by a few grey levels
    # on this picture (0.2-0.4 on average), a flipped or turned frame by 40 or more
    assert np.abs(gray.astype(int) - expected).mean() < 2


def test_reduced_decode_falls_back_to_the_full_decode(tmp_path):
    # near-square with EXIF 6: ceil(2600 / 4) == ceil(2597 / 4), the frame cannot be told
    square = tmp_path / "square.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_pattern(2600, 2597)).save(square, exif=exif, quality=95)
    # a PNG, a JPEG already small enough
    png, small = tmp_path / "photo.png", tmp_path / "small.jpg"
    cv2.imwrite(str(png), _pattern(1800, 1200))
    cv2.imwrite(str(small), _pattern(1000, 700))
    for path in (square, png, small):
        assert _read_reduced(path, 640) is None, path
        expected = _full_decode_gray(path, 640)
        gray = read_gray_downsized(path, 640)
        assert gray.shape == expected.shape, path
        assert np.abs(gray.astype(int) - expected).max() <= 1, path  # gray decode vs RGB->gray
    # a truncated JPEG is refused as by read_image, not decoded half grey
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(square.read_bytes()[:-5000])
    assert _read_reduced(truncated, 640) is None
    with pytest.raises(ImageReadError):
        read_gray_downsized(truncated, 640)


def test_downsized_gray_refuses_what_read_image_refuses(tmp_path):
    thin = tmp_path / "thin.jpg"
    cv2.imwrite(str(thin), _pattern(3000, 20))
    assert _read_reduced(thin, 640) is None
    with pytest.raises(ImageReadError, match="too small"):
        read_gray_downsized(thin, 640)
