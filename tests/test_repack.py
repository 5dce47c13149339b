import numpy as np
import torch

from mlns_fast.config import RenderConfig
from mlns_fast.data.loaders import REAL, SYNTH, build_dataloaders
from mlns_fast.data.repack import INK, ink_segments, repack

from .conftest import assert_user_error, run_cli

LEVELS = (70, 130, 190, 250)  # one grey level per block, brighter to the right: an overlap hides the dimmer one


def _row(widths=(12, 8, 14, 10), starts=(5, 40, 80, 130), heights=(30, 26, 34, 22)) -> np.ndarray:
    img = np.zeros((40, 168), np.uint8)
    for x, w, h, v in zip(starts, widths, heights, LEVELS):
        img[3:3 + h, x:x + w] = v
    return img


def test_ink_segments_finds_each_block_and_merges_a_broken_stroke():
    img = _row()
    assert ink_segments(img) == [(5, 17, 3, 33), (40, 48, 3, 29), (80, 94, 3, 37), (130, 140, 3, 25)]
    img[:, 86:88] = 0  # two blank columns inside the third block: still one digit
    assert len(ink_segments(img)) == 4
    img[:, 85:89] = 0  # four: two
    assert len(ink_segments(img)) == 5
    assert ink_segments(np.zeros((40, 168), np.uint8)) == []


def test_repack_draws_the_row_small_and_overlapping_in_order():
    cfg, img = RenderConfig(), _row()
    lo, hi = cfg.glyph_height
    for seed in range(20):
        out = repack(img, cfg, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        # the tallest block (34 px) drawn from the smallest third of glyph_height, the others scaled alike
        tall = np.flatnonzero((out == LEVELS[2]).any(1))
        assert lo * 40 - 2 <= tall[-1] - tall[0] + 1 <= (lo + (hi - lo) / 3) * 40 + 1
        # overlapping or touching: the blocks' 44 px side by side, scaled by at most 20.8 / 34, rounded
        cols = np.flatnonzero((out > 0).any(0))
        assert cols[-1] - cols[0] + 1 <= 44 * (lo + (hi - lo) / 3) * 40 / 34 + 4
        # every block still shows, left to right (the brighter neighbour covers at most 60 % of it)
        centres = [np.median(np.flatnonzero((out == v).any(0))) for v in LEVELS]
        assert all(np.isfinite(centres)) and centres == sorted(centres)


def test_repack_size_any_draws_from_the_whole_glyph_height_range():
    cfg, img = RenderConfig(), _row()
    lo, hi = cfg.glyph_height
    talls = []
    for seed in range(40):
        small = repack(img, cfg, np.random.default_rng(seed))
        out = repack(img, cfg, np.random.default_rng(seed), "any")
        rows = [np.flatnonzero((o == LEVELS[2]).any(1)) for o in (small, out)]
        t_small, t_any = (r[-1] - r[0] + 1 for r in rows)
        assert t_any >= t_small - 1  # the same draw, three times the span (unless the row had to shrink)
        talls.append(t_any)
    assert max(talls) <= hi * 40 + 1
    assert max(talls) > (lo + (hi - lo) / 3) * 40 + 4  # beyond the small sizes: the whole range is drawn
    assert min(talls) < (lo + (hi - lo) / 2) * 40  # and its low half too


def test_repack_is_deterministic_and_leaves_a_blank_image():
    cfg, img = RenderConfig(), _row()
    a, b = (repack(img, cfg, np.random.default_rng(3)) for _ in range(2))
    assert np.array_equal(a, b) and not np.array_equal(a, repack(img, cfg, np.random.default_rng(4)))
    blank = np.zeros((40, 168), np.uint8)
    assert np.array_equal(repack(blank, cfg, np.random.default_rng(0)), blank)


def test_loader_repacks_real_images_only_keeping_their_labels(tiny_cfg):
    plain = build_dataloaders(tiny_cfg(data="real", augment=False)).train
    packed = build_dataloaders(tiny_cfg(data="real", augment=False, repack=1.0)).train
    key = (REAL, 0, 5)
    (x0, s0, d0, k0), (x1, s1, d1, k1) = plain.dataset[key], packed.dataset[key]
    assert torch.equal(s0, s1) and torch.equal(d0, d1) and torch.equal(k0, k1)
    assert not torch.equal(x0, x1)
    assert (x1 > 40).any(0).sum() < (x0 > 40).any(0).sum()  # fewer inked columns: drawn small and overlapping
    assert torch.equal(x1, packed.dataset[key][0])  # a pure function of (seed, epoch, j)
    assert not torch.equal(x1, packed.dataset[(REAL, 1, 5)][0])  # a fresh layout every epoch
    valid0 = build_dataloaders(tiny_cfg(data="real", augment=False)).valid.dataset
    valid1 = build_dataloaders(tiny_cfg(data="real", augment=False, repack=1.0)).valid.dataset
    assert torch.equal(valid0[key][0], valid1[key][0])  # validation images never re-laid out


def test_repack_until_ends_the_crowded_views_after_its_share_of_the_epochs(tiny_cfg):
    plain = build_dataloaders(tiny_cfg(data="real", augment=False, epochs=4)).train.dataset
    cfg = tiny_cfg(data="real", augment=False, epochs=4, repack=1.0, repack_until=0.5, repack_size="any")
    packed = build_dataloaders(cfg).train.dataset
    for epoch in range(4):
        same = torch.equal(plain[(REAL, epoch, 5)][0], packed[(REAL, epoch, 5)][0])
        assert same == (epoch >= 2), epoch  # epochs 0 and 1 crowded, 2 and 3 in the images' own layout


def test_repack_slots_synthetic_keeps_every_real_view_and_gives_synthetic_slots_to_crowded_ones(tiny_cfg):
    plain = build_dataloaders(tiny_cfg(augment=False)).train.dataset
    packed = build_dataloaders(tiny_cfg(augment=False, repack=1.0, repack_slots="synthetic")).train.dataset
    real = packed.real
    for j in range(6):  # every real image in its own layout, every epoch
        assert torch.equal(plain[(REAL, 1, j)][0], packed[(REAL, 1, j)][0])
    assert packed.repack_synth == 1.0  # --mix 0.5: one synthetic slot per real image
    for j in range(6):  # ... and every synthetic slot a crowded view of a real image, with its labels
        x, s, d, known = packed[(SYNTH, 0, j)]
        assert not torch.equal(x, plain[(SYNTH, 0, j)][0])
        assert int(s) in set(real.sums.tolist()) and bool(known) == (real.digits is not None)
        assert (x[0] > INK).any(0).sum() < 120  # drawn overlapping: narrower than four glyphs side by side
    assert torch.equal(packed[(SYNTH, 0, 3)][0], packed[(SYNTH, 0, 3)][0])  # a pure function of the key
    share = build_dataloaders(tiny_cfg(augment=False, repack=0.6, mix=0.75, repack_slots="synthetic")).train.dataset
    assert abs(share.repack_synth - 0.2) < 1e-9  # as many crowded views as --repack-slots real would draw
    crowded = sum(not torch.equal(share[(SYNTH, 0, j)][0], plain[(SYNTH, 0, j)][0]) for j in range(300))
    assert 35 <= crowded <= 85, crowded  # 60 expected


def test_repack_slots_synthetic_needs_mixed_batches(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--data", "real", "--repack", "0.25", "--repack-slots", "synthetic",
                           "--runs-dir", tmp_path)
    assert_user_error(code, err, "--repack-slots synthetic replaces synthetic images")
    code, _, err = run_cli(capsys, "train", "--repack", "0.25", "--repack-slots", "fake", "--runs-dir", tmp_path)
    assert_user_error(code, err, "repack")
    assert not any(tmp_path.iterdir())


def test_preview_draws_the_crowded_views_of_real_images(capsys, tmp_path):
    from mlns_fast.data.preview import preview_samples
    plain, packed = preview_samples("demo", 6), preview_samples("demo", 6, repack=True)
    assert packed.images.shape == plain.images.shape and np.array_equal(packed.sums, plain.sums)
    for a, b in zip(plain.images, packed.images):  # each drawn narrower and smaller than it was
        assert (b > INK).any(0).sum() < (a > INK).any(0).sum() and (b > INK).sum() < (a > INK).sum()
    code, _, _ = run_cli(capsys, "data", "preview", "--source", "demo", "--repack", "--n", "4", "--out", tmp_path / "p.png")
    assert code == 0 and (tmp_path / "p.png").stat().st_size > 2000
    code, _, err = run_cli(capsys, "data", "preview", "--repack", "--out", tmp_path / "s.png")
    assert_user_error(code, err, "--repack previews real images")
    assert not (tmp_path / "s.png").exists()
    code, _, err = run_cli(capsys, "data", "preview", "--source", "demo", "--repack", "--repack-size", "huge",
                           "--out", tmp_path / "h.png")
    assert_user_error(code, err, "--repack-size must be one of small, any")
    assert not (tmp_path / "h.png").exists()


def test_repack_without_real_images_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--data", "synthetic", "--repack", "0.5", "--runs-dir", tmp_path)
    assert_user_error(code, err, "--data synthetic has none")
    code, _, err = run_cli(capsys, "train", "--repack", "1.5", "--runs-dir", tmp_path)
    assert_user_error(code, err, "repack")
    assert not any(tmp_path.iterdir())  # nothing half-written
