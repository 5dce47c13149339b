import logging

import cv2
import numpy as np
import pytest

from mlns_fast.data.sources import (check_labels, concat, load_folder, load_images, load_npy_pair, load_npz,
                                    load_source, load_sources)
from mlns_fast.config import IMAGE_SIZE
from mlns_fast.errors import DataError

from .conftest import make_samples


def _pair(tmp_path, images, labels, stem="d"):
    np.save(tmp_path / f"{stem}x.npy", images)
    np.save(tmp_path / f"{stem}y.npy", labels)
    return tmp_path / f"{stem}x.npy", tmp_path / f"{stem}y.npy"


@pytest.mark.parametrize("scale, dtype", [(1, np.uint8), (1 / 255, np.float32), (1, np.float64), (1, np.int32)])
def test_npy_pair_accepts_course_dtypes(tmp_path, scale, dtype):
    s = make_samples()
    x, y = _pair(tmp_path, (s.images * scale).astype(dtype), s.sums.astype(np.int16))
    out = load_npy_pair(x, y)
    assert out.images.dtype == np.uint8 and out.images.shape == (8, 40, 168)
    assert np.abs(out.images.astype(int) - s.images).max() <= 1
    assert out.sums.dtype == np.int64 and (out.sums == s.sums).all() and out.digits is None


def test_several_pairs_concatenate(tmp_path):
    s = make_samples()
    a = _pair(tmp_path, s.images, s.sums, "a")
    b = _pair(tmp_path, s.images[:3], s.sums[:3], "b")
    out = load_sources([f"{a[0]}:{a[1]}", f"{b[0]}:{b[1]}"])
    assert len(out) == 11 and (out.sums[8:] == s.sums[:3]).all()


def test_npz_with_digits(tmp_path):
    s = make_samples()
    np.savez(tmp_path / "s.npz", images=s.images, labels=s.sums, digits=s.digits)
    out = load_npz(tmp_path / "s.npz")
    assert (out.digits == s.digits).all() and out.digits.shape == (8, 4)


@pytest.mark.parametrize("header", [True, False])
def test_folder_with_labels_csv(tmp_path, header):
    s = make_samples(4)
    lines = ["filename,sum,d1,d2,d3,d4"] if header else []
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), s.images[i])
        lines.append(f"im{i}.png,{s.sums[i]}," + ",".join(map(str, s.digits[i])))
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = load_folder(tmp_path)
    assert (out.images == s.images).all() and (out.sums == s.sums).all() and (out.digits == s.digits).all()


def test_folder_sum_only_and_colour_images_resized(tmp_path, caplog):
    rgb = np.zeros((80, 336, 3), np.uint8)
    rgb[20:60, 50:90] = 255
    cv2.imwrite(str(tmp_path / "a.jpg"), rgb)
    (tmp_path / "labels.csv").write_text("a.jpg,7\n")
    with caplog.at_level(logging.INFO):
        out = load_folder(tmp_path, IMAGE_SIZE)  # a run's input size (no size: the images as they are)
    assert out.images.shape == (1, 40, 168) and out.sums.tolist() == [7] and out.digits is None
    assert out.images[0, 20, 35] > 200 and out.images[0, 0, 0] == 0
    assert "resizing" in caplog.text


def test_colour_stack_converts_to_gray(tmp_path):
    s = make_samples()
    rgb = np.repeat(s.images[..., None], 3, axis=-1)
    x, y = _pair(tmp_path, rgb, s.sums)
    out = load_npy_pair(x, y)
    assert out.images.shape == (8, 40, 168) and np.abs(out.images.astype(int) - s.images).max() <= 1


def test_concat_keeps_digits_only_if_all_have_them():
    a, b = make_samples(), make_samples(digits=False)
    assert concat([a, a]).digits.shape == (16, 4)
    assert concat([a, b]).digits is None


def test_source_spec_dispatch(tmp_path):
    s = make_samples()
    np.savez(tmp_path / "s.npz", images=s.images, labels=s.sums)
    assert len(load_source(str(tmp_path / "s.npz"))) == 8
    with pytest.raises(DataError, match="needs its labels"):
        load_source(str(tmp_path / "x.npy"))


# --- every validation error: one line naming the file and the problem -------------------------
def _err(fn):
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    assert "file not found" in _err(lambda: load_npy_pair(tmp_path / "no.npy", tmp_path / "nol.npy"))


def test_corrupt_file(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"garbage that is not numpy")
    (tmp_path / "y.npy").write_bytes(b"x")
    assert "unreadable" in _err(lambda: load_npy_pair(tmp_path / "x.npy", tmp_path / "y.npy"))
    (tmp_path / "z.npz").write_bytes(b"PK\x03\x04broken")
    assert "z.npz" in _err(lambda: load_npz(tmp_path / "z.npz"))


def test_pickled_object_array_refused(tmp_path):
    obj = np.empty(8, dtype=object)
    np.save(tmp_path / "o.npy", obj, allow_pickle=True)
    np.save(tmp_path / "y.npy", np.zeros(8, int))
    assert "pickled" in _err(lambda: load_npy_pair(tmp_path / "o.npy", tmp_path / "y.npy"))
    np.savez(tmp_path / "o.npz", images=obj, labels=np.zeros(8, int))
    assert "pickled" in _err(lambda: load_npz(tmp_path / "o.npz"))


@pytest.mark.parametrize("images, labels, msg", [
    (np.zeros((8, 40), np.uint8), np.zeros(8, int), "shape N x H x W"),
    (np.zeros((8, 40, 168), np.uint8), np.zeros(7, int), "8 images but 7 labels"),
    (np.zeros((0, 40, 168), np.uint8), np.zeros(0, int), "no images"),
    (np.zeros((8, 40, 168), np.uint8), np.full(8, 37), "labels must be in 0..36"),
    (np.zeros((8, 40, 168), np.uint8), np.full(8, -1), "labels must be in 0..36"),
    (np.zeros((8, 40, 168), np.uint8), np.full(8, 2.5), "whole numbers"),
    (np.full((8, 40, 168), np.nan, np.float32), np.zeros(8, int), "NaN or inf"),
    (np.zeros((8, 1, 168), np.uint8), np.zeros(8, int), "too small"),
    (np.full((8, 40, 168), 300, np.int32), np.zeros(8, int), "0..255"),
])
def test_bad_arrays(tmp_path, images, labels, msg):
    x, y = _pair(tmp_path, images, labels)
    m = _err(lambda: load_npy_pair(x, y, IMAGE_SIZE))
    assert msg in m and str(tmp_path) in m


@pytest.mark.parametrize("digits, msg", [
    (np.full((8, 4), 10), "digits must be in 0..9"),
    (np.zeros((8, 3), int), "shape 8 x 4"),
])
def test_bad_digits(tmp_path, digits, msg):
    s = make_samples()
    np.savez(tmp_path / "d.npz", images=s.images, labels=s.sums, digits=digits)
    assert msg in _err(lambda: load_npz(tmp_path / "d.npz"))


def test_digits_must_sum_to_label(tmp_path):
    s = make_samples()
    d = s.digits.copy()
    d[3, 0] = (d[3, 0] + 1) % 10
    np.savez(tmp_path / "d.npz", images=s.images, labels=s.sums, digits=d)
    assert "row 3" in _err(lambda: load_npz(tmp_path / "d.npz"))


def test_npz_missing_arrays_and_folder_without_csv(tmp_path):
    np.savez(tmp_path / "m.npz", pics=np.zeros(3))
    assert "missing array" in _err(lambda: load_npz(tmp_path / "m.npz"))
    (tmp_path / "dir").mkdir()
    assert "labels.csv" in _err(lambda: load_source(str(tmp_path / "dir")))


def test_labels_column_vector_accepted():
    assert check_labels(np.arange(5).reshape(5, 1), "x", 5).tolist() == [0, 1, 2, 3, 4]


def test_load_images_for_prediction(tmp_path):
    s = make_samples(3)
    np.save(tmp_path / "stack.npy", s.images)
    cv2.imwrite(str(tmp_path / "one.png"), s.images[0])
    imgs, names = load_images([tmp_path / "stack.npy", tmp_path / "one.png"])
    assert imgs.shape == (4, 40, 168) and names[0].endswith("stack.npy[0]") and names[3].endswith("one.png")
    assert "file not found" in _err(lambda: load_images([tmp_path / "none.png"]))


def _folder(tmp_path, rows, n=2):
    s = make_samples(n)
    for i in range(n):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), s.images[i])
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.mark.parametrize("name", ["../outside.png", "{abs}", "../not_an_image.txt", "../missing.png", "sub/../../outside.png"])
def test_csv_rows_cannot_leave_the_folder_and_errors_do_not_tell_what_exists(tmp_path, name):
    (tmp_path / "outside.png").write_bytes(cv2.imencode(".png", np.zeros((40, 168), np.uint8))[1].tobytes())
    (tmp_path / "not_an_image.txt").write_text("hello")
    inner = tmp_path / "data"
    inner.mkdir()
    name = name.replace("{abs}", str(tmp_path / "outside.png"))
    _folder(inner, [f"{name},3"])
    with pytest.raises(DataError, match=r"row 1: image .* not found in") as e:
        load_folder(inner)
    assert "readable" not in str(e.value)


def test_rgba_ink_in_the_alpha_channel_is_read(tmp_path):
    bgra = np.zeros((40, 168, 4), np.uint8)
    bgra[10:30, 20:40, 3] = 255  # black colour everywhere, the digit drawn in alpha
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    (tmp_path / "labels.csv").write_text("a.png,5\n")
    img = load_folder(tmp_path).images[0]
    assert img.max() == 255 and img[20, 30] == 255 and img[0, 0] == 0


def test_rgba_colour_is_composited_over_black(tmp_path):
    bgra = np.zeros((40, 168, 4), np.uint8)
    bgra[..., :3] = 200
    bgra[5:35, 10:60, :3] = 255
    bgra[..., 3] = 255
    bgra[:, 100:, 3] = 0  # transparent right part -> black
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    (tmp_path / "labels.csv").write_text("a.png,5\n")
    img = load_folder(tmp_path).images[0]
    assert img[20, 30] == 255 and img[0, 0] == 200 and img[20, 120] == 0


@pytest.mark.parametrize("rows, msg", [
    (["im0.png,3.7"], "whole numbers, got '3.7'"),
    (["im0.png,3", "im1.png,abc"], "row 2: labels must be integers, got 'abc'"),
    (["im0.png,3", "im1.png,4", "im0.png,5"], r"im0.png is listed again \(first at row 1\)"),
    (["im0.png"], "row 1: expected filename,sum"),
])
def test_bad_csv_rows(tmp_path, rows, msg):
    with pytest.raises(DataError, match=msg):
        load_folder(_folder(tmp_path, rows))


def test_csv_whole_floats_and_a_bom_header_are_fine(tmp_path):
    _folder(tmp_path, [])
    (tmp_path / "labels.csv").write_bytes("\ufefffilename,sum\nim0.png,3.0\nim1.png,4\n".encode())
    assert load_folder(tmp_path).sums.tolist() == [3, 4]


def test_non_utf8_csv(tmp_path):
    _folder(tmp_path, [])
    (tmp_path / "labels.csv").write_bytes(b"im0.png,3\n\xff\xfe\x00bad,4\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_folder(tmp_path)


@pytest.mark.parametrize("images, labels, msg", [
    (np.ones((2, 40, 168), bool), np.array([3, 4]), "images must be numeric"),
    (np.zeros((2, 40, 168), np.uint8), np.array([True, False]), "labels must be integers"),
    (np.full((2, 40, 168), 300.0), np.array([3, 4]), r"float pixels must be in 0..1 or 0..255, found 300..300"),
    (np.full((2, 40, 168), -0.5), np.array([3, 4]), "float pixels must be in"),
])
def test_silently_wrong_arrays_are_refused(tmp_path, images, labels, msg):
    x, y = _pair(tmp_path, images, labels)
    with pytest.raises(DataError, match=msg):
        load_npy_pair(x, y)


def test_a_folder_of_mixed_image_sizes_is_resized_with_a_note(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 168), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((80, 336), 200, np.uint8))
    (tmp_path / "labels.csv").write_text("a.png,3\nb.png,4\n")
    with caplog.at_level(logging.INFO, logger="mlns_fast"):
        s = load_folder(tmp_path, IMAGE_SIZE)
    assert s.images.shape == (2, 40, 168)
    assert any("resizing 2 images of 2 different sizes to 40x168" in m for m in caplog.messages)
