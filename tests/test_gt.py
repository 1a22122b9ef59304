import numpy as np
import pytest

from reconstruct.errors import InputError
from reconstruct.gt import CameraPose, read_cameras_txt, rotate_camera, write_cameras_txt


def _project(cam: CameraPose, point: np.ndarray) -> np.ndarray:
    p = cam.rotation @ point + cam.translation
    return np.array([cam.fx * p[0] / p[2] + cam.cx, cam.fy * p[1] / p[2] + cam.cy])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotate_camera_follows_the_turned_image(k):
    rng = np.random.default_rng(k)
    q = rng.normal(size=4)
    from scipy.spatial.transform import Rotation

    cam = CameraPose(
        "a",
        500.0,
        480.0,
        300.0,
        210.0,
        Rotation.from_quat(q).as_matrix(),
        np.array([0.1, -0.2, 4.0]),
    )
    w, h = 640, 400
    point = cam.rotation.T @ (np.array([0.3, -0.2, 1.0]) * 3 - cam.translation)
    u, v = _project(cam, point)
    # where np.rot90(image, k) puts the pixel at (u, v), in continuous coordinates
    expected = {0: (u, v), 1: (v, w - u), 2: (w - u, h - v), 3: (h - v, u)}[k]
    turned = rotate_camera(cam, k, w, h)
    np.testing.assert_allclose(_project(turned, point), expected, atol=1e-9)
    np.testing.assert_allclose(turned.center, cam.center, atol=1e-12)


def test_read_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "cameras.txt"
    path.write_text(
        "# header\n\n"
        "a.jpg 100 101 50 40 1 0 0 0 1 2 3  # trailing comment\n"
        "   \n"
        "b.jpg 100 100 50 40 0 0 0 2 0 0 0\n"
    )
    cams = read_cameras_txt(path)
    assert list(cams) == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(cams["a.jpg"].rotation, np.eye(3))
    np.testing.assert_allclose(cams["a.jpg"].translation, [1, 2, 3])
    # an unnormalised quaternion is normalised: (0, 0, 0, 2) is 180 degrees about z
    np.testing.assert_allclose(cams["b.jpg"].rotation, np.diag([-1, -1, 1]), atol=1e-12)
    again = read_cameras_txt(write_cameras_txt(tmp_path / "again.txt", cams.values()))
    for n in cams:
        np.testing.assert_allclose(again[n].rotation, cams[n].rotation, atol=1e-9)


@pytest.mark.parametrize(
    "line, message",
    [
        ("a.jpg 1 2 3", "expected 12 fields"),
        ("a.jpg 1 1 1 1 1 0 0 0 x 0 0", "non-numeric"),
        ("a.jpg 1 1 1 1 0 0 0 0 0 0 0", "quaternion"),
        ("a.jpg -1 1 1 1 1 0 0 0 0 0 0", "focal"),
        ("a.jpg 1 1 1 1 1 0 0 0 nan 0 0", "non-finite"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "gt.txt"
    path.write_text("# ok\nb.jpg 1 1 1 1 1 0 0 0 0 0 0\n" + line + "\n")
    with pytest.raises(InputError, match=rf"gt.txt:3: .*{message}"):
        read_cameras_txt(path)


def test_duplicates_and_empty_files(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("a 1 1 1 1 1 0 0 0 0 0 0\na 1 1 1 1 1 0 0 0 0 0 0\n")
    with pytest.raises(InputError, match="twice"):
        read_cameras_txt(path)
    path.write_text("# nothing\n")
    with pytest.raises(InputError, match="no cameras"):
        read_cameras_txt(path)
