"""The pre-rendered synthetic pool (`--synth-pool`): cached, reused, drawn afresh each epoch, deterministic."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from mlns_fast.config import layout_config
from mlns_fast.data import pool as pool_mod
from mlns_fast.data.cache import cache_root
from mlns_fast.data.loaders import SYNTH, build_dataloaders
from mlns_fast.data.pool import synthetic_pool
from mlns_fast.data.render import create_renderer


def _clean_renderer(seed=3):
    """The training layout without canvas noise or blur, so ink is exactly the non-zero pixels (a
    blur's faint halo reaches past the glyph boxes, and may wrap with the roll as noise does)."""
    return create_renderer(replace(layout_config("train"), noise_p=0.0, blur_p=0.0), seed)


def test_pool_holds_the_renderers_first_epoch_and_is_reused(monkeypatch):
    r = _clean_renderer()
    p = synthetic_pool(r, 40, processes=2)
    assert p.images.shape == (40, 40, 168) and p.images.dtype == np.uint8 and isinstance(p.images, np.memmap)
    for i in (0, 17, 39):
        ref = r(0, i)
        assert np.array_equal(p.images[i], ref.image) and np.array_equal(p.digits[i], ref.digits)
        assert tuple(p.ink[i]) == (ref.boxes[:, 0].min(), ref.boxes[:, 1].min(), ref.boxes[:, 2].max(),
                                   ref.boxes[:, 3].max())
    # a second run of the same data renders nothing: it reads the cached files
    monkeypatch.setattr(pool_mod, "_build", lambda *a, **k: pytest.fail("rebuilt a cached pool"))
    again = synthetic_pool(_clean_renderer(), 40)
    assert np.array_equal(again.images, p.images)
    # another seed or size is another pool
    assert pool_mod.pool_key(_clean_renderer(seed=4), 40) != pool_mod.pool_key(r, 40)
    assert pool_mod.pool_key(r, 41) != pool_mod.pool_key(r, 40)


def test_items_are_fresh_each_epoch_keep_their_ink_and_labels():
    r = _clean_renderer()
    p = synthetic_pool(r, 30, processes=1)
    seen = {}
    for epoch in range(3):
        for j in range(60):  # two laps through the pool in each epoch
            img, digits = p.item(epoch, j)
            ys, xs = np.nonzero(img)
            # the roll never wraps ink: its bounding box keeps the rendered width and height
            src = [i for i in range(30) if np.array_equal(p.digits[i], digits)
                   and img.sum(dtype=np.int64) == p.images[i].sum(dtype=np.int64)]
            assert src, "an item that is no pool image"
            x0, y0, x1, y1 = p.ink[src[0]]
            assert xs.max() - xs.min() <= x1 - x0 and ys.max() - ys.min() <= y1 - y0
            seen.setdefault(src[0], set()).add((int(xs.min()), int(ys.min())))
    assert len(seen) == 30  # every pool image is drawn
    assert sum(len(v) > 1 for v in seen.values()) > 20  # and mostly moved to new places
    # a pure function of (seed, epoch, j)
    a, b = p.item(2, 45), synthetic_pool(r, 30).item(2, 45)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_a_run_draws_each_pool_image_once_per_lap():
    p = synthetic_pool(_clean_renderer(), 25, processes=1)
    p.per_epoch = 5  # a run of five epochs of five images: one lap
    order = pool_mod._order(p.seed, 0, 25)
    assert sorted(order) == list(range(25)) and list(pool_mod._order(p.seed, 1, 25)) != list(order)
    # item (epoch, j) is pool image order[epoch * per_epoch + j]: every image once over the run, none twice
    sums = [int(np.asarray(p.item(e, j)[0], np.int64).sum()) for e in range(5) for j in range(5)]
    assert sums == [int(np.asarray(p.images[i], np.int64).sum()) for i in order]
    assert len(set(sums)) == 25  # (the sums tell the images apart)


def test_a_stopped_build_leaves_no_pool(monkeypatch):
    calls = []

    def render_then_stop(span):
        calls.append(span)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(span)

    real = pool_mod._render_range
    monkeypatch.setattr(pool_mod, "_render_range", render_then_stop)
    r = create_renderer(layout_config("train"), 11)
    with pytest.raises(KeyboardInterrupt):
        synthetic_pool(r, 5000, processes=1)
    assert not (cache_root() / f"pool-{pool_mod.pool_key(r, 5000)}").exists()
    assert not list(cache_root().glob(".pool-*"))


def test_loaders_with_a_pool_are_deterministic_and_labelled(tiny_cfg):
    cfg = tiny_cfg(synth_pool=64, augment=True)
    a = build_dataloaders(cfg).train
    b = build_dataloaders(tiny_cfg(synth_pool=64, augment=True, workers=1)).train
    for ba, bb in zip(a, b):
        for ta, tb in zip(ba, bb):
            assert torch.equal(ta, tb)
    x, s, d, k = next(iter(a))
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert (d[k].sum(1) == s[k]).all() and k.float().mean().item() == 0.5
    syn = [key for key in a._plan() if key[0] == SYNTH]
    pool = a.dataset.pool
    for key in syn[:8]:
        img, digits = pool.item(key[1], key[2])
        xi, si, di, ki = a.dataset[key]
        assert torch.equal(xi[0], torch.from_numpy(img)) and int(si) == int(digits.sum()) and bool(ki)
    a.epoch = 1
    first = [a.dataset[key][0] for key in syn[:4]]
    later = [a.dataset[key][0] for key in [k for k in a._plan() if k[0] == SYNTH][:4]]
    assert any(not torch.equal(f, g) for f, g in zip(first, later))  # a new epoch, new images


def test_a_pool_of_minus_one_holds_what_the_run_draws_and_shows_each_image_once(tiny_cfg):
    cfg = tiny_cfg(synth_pool=-1, epochs=3, mix=0.5)
    dl = build_dataloaders(cfg).train
    pool = dl.dataset.pool
    seen = []
    for epoch in range(3):
        dl.epoch = epoch
        seen += [k for k in dl._plan() if k[0] == SYNTH]
    assert pool.per_epoch == len(seen) // 3 > 0 and len(pool) == len(seen)
    # every synthetic item of the run is another pool image (told apart by digits and ink, which a roll keeps)
    drawn = {(tuple(d), int(np.asarray(img, np.int64).sum())) for img, d in (pool.item(k[1], k[2]) for k in seen)}
    whole = {(tuple(pool.digits[i]), int(np.asarray(pool.images[i], np.int64).sum())) for i in range(len(pool))}
    assert drawn == whole and len(whole) == len(seen)
    # a fixed size smaller than the run draws laps through it (and says so in the log)
    small = build_dataloaders(tiny_cfg(synth_pool=20, epochs=3, mix=0.5)).train.dataset.pool
    assert len(small) == 20 and small.per_epoch == pool.per_epoch


@pytest.mark.parametrize("damage", ["truncate", "digits", "ink", "missing"])
def test_an_altered_cached_pool_is_rendered_again(damage):
    """The cache is a file anyone can edit: a pool that does not read back whole is rebuilt, never used."""
    r = _clean_renderer(seed=21)
    first = synthetic_pool(r, 30, processes=1)
    folder = cache_root() / f"pool-{pool_mod.pool_key(r, 30)}"
    reference = np.array(first.images)
    del first
    if damage == "truncate":
        (folder / "images.npy").write_bytes((folder / "images.npy").read_bytes()[:5000])
    elif damage == "digits":
        np.save(folder / "digits.npy", np.full((30, 4), 12))
    elif damage == "ink":
        np.save(folder / "ink.npy", np.tile([0, 0, 500, 40], (30, 1)))
    else:
        (folder / "ink.npy").unlink()
    again = synthetic_pool(_clean_renderer(seed=21), 30, processes=1)
    assert np.array_equal(np.asarray(again.images), reference) and again.digits.max() <= 9
    assert again.ink[:, 2].max() <= 168



def test_a_minus_one_pool_under_two_ranks_is_shared_and_each_image_is_drawn_once(tiny_cfg):
    """Under DDP every rank builds (or reads) the same pool, sized by every rank's images together; the
    ranks' draws are disjoint and together show each image once."""
    cfg = tiny_cfg(synth_pool=-1, epochs=2, mix=0.5)
    dls = [build_dataloaders(cfg, rank=r, world=2).train for r in (0, 1)]
    pools = [dl.dataset.pool for dl in dls]
    keys = [[], []]
    for r, dl in enumerate(dls):
        for epoch in range(2):
            dl.epoch = epoch
            keys[r] += [k for k in dl._plan() if k[0] == SYNTH]
    assert len(keys[0]) == len(keys[1]) > 0
    assert pools[0].per_epoch == pools[1].per_epoch == len(keys[0])  # both ranks' images of one epoch
    assert len(pools[0]) == len(pools[1]) == 2 * len(keys[0])
    assert np.array_equal(np.asarray(pools[0].images), np.asarray(pools[1].images))  # one pool, one cache folder
    # the pool images each rank draws (by their place in the run's order): disjoint, and all of them
    n, per = len(pools[0]), pools[0].per_epoch
    drawn = [{int(pool_mod._order(cfg.train.seed, (e * per + j) // n, n)[(e * per + j) % n]) for _, e, j in ks}
             for ks in keys]
    assert not drawn[0] & drawn[1] and drawn[0] | drawn[1] == set(range(n))
    for (_, e, j) in keys[1][:5]:
        img, digits = pools[1].item(e, j)
        assert int(digits.sum()) == int(dls[1].dataset[(SYNTH, e, j)][1])
