from dataclasses import replace

import numpy as np
import pytest

from mlns_fast.config import LAYOUTS, RenderConfig, resolve_config, spec_dict
from mlns_fast.data.mnist import embedded_bank
from mlns_fast.data.render import TTF_FACES, Renderer, font_glyphs, render_npz, ttf_glyphs
from mlns_fast.data.sources import load_npz
from mlns_fast.errors import ConfigError


@pytest.fixture(scope="module")
def bank():
    return embedded_bank("synth")


@pytest.mark.parametrize("glyphs", ["handwriting", "fonts", "mixed"])
def test_same_key_same_pixels_other_key_other_pixels(bank, glyphs):
    cfg = replace(RenderConfig(), glyphs=glyphs, font_ratio=0.5)
    a, b = Renderer(cfg, bank, seed=3), Renderer(cfg, bank, seed=3)
    assert (a(5, 7).image == b(5, 7).image).all() and (a(5, 7).digits == b(5, 7).digits).all()
    assert not (a(5, 7).image == a(5, 8).image).all()
    assert not (a(5, 7).image == Renderer(cfg, bank, seed=4)(5, 7).image).all()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_labels_and_boxes(bank, layout):
    r = Renderer(LAYOUTS[layout], bank, seed=0)
    sums = []
    for i in range(200):
        o = r(i)
        assert o.image.shape == (40, 168) and o.image.dtype == np.uint8
        assert o.digits.shape == (4,) and o.digits.min() >= 0 and o.digits.max() <= 9 and o.sum == o.digits.sum()
        x0, y0, x1, y1 = o.boxes.T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 168).all() and (y1 <= 40).all() and (x1 > x0).all()
        assert (np.diff(x0) >= 0).all()  # left to right
        inside = np.zeros_like(o.image, bool)
        for bx0, by0, bx1, by1 in o.boxes:
            inside[by0:by1, bx0:bx1] = True
        noisy = LAYOUTS[layout].noise_p > 0 or LAYOUTS[layout].blur_p > 0
        if not noisy:
            assert o.image[~inside].max(initial=0) == 0  # every ink pixel belongs to a digit's box
        assert o.image.max() > 0.5 * 255 * LAYOUTS[layout].contrast[0]  # faint ink is still ink
        sums.append(o.sum)
    assert 8 < np.mean(sums) < 28  # four uniform digits average 18


def test_fonts_need_no_bank():
    o = Renderer(replace(RenderConfig(), glyphs="fonts"), None)(0)
    assert o.image.max() > 100
    with pytest.raises(ConfigError, match="needs a handwriting bank"):
        Renderer(RenderConfig(), None)


def test_ttf_faces_draw_every_digit_and_none_is_a_hershey_glyph():
    """`--faces ttf`: one glyph per face and digit, each a cropped upright-sized digit, the ten of a face
    all different, and none the same bitmap as any of the battery's Hershey glyphs."""
    pools = ttf_glyphs()
    assert len(pools) == 10 and {len(p) for p in pools} == {len(TTF_FACES)} and len(TTF_FACES) >= 20
    for glyph in (g for p in pools for g in p):
        assert glyph.dtype == np.uint8 and glyph.ndim == 2 and glyph.max() > 200
        assert 15 <= glyph.shape[0] <= 60 and 3 <= glyph.shape[1] <= 50  # 48 px type cropped (cmmi10: old-style)
    for face in range(len(TTF_FACES)):
        assert len({pools[d][face].tobytes() for d in range(10)}) == 10
    hershey = {(g.shape, g.tobytes()) for p in font_glyphs() for g in p}
    assert not hershey & {(g.shape, g.tobytes()) for p in pools for g in p}


@pytest.mark.parametrize("glyphs", ["fonts", "mixed"])
def test_faces_picks_the_printed_glyphs_and_only_ttf_enters_the_digest(bank, glyphs):
    ttf = Renderer(replace(RenderConfig(), glyphs=glyphs, font_ratio=1.0, faces="ttf"), bank, seed=1)
    hershey = Renderer(replace(RenderConfig(), glyphs=glyphs, font_ratio=1.0, faces="hershey"), bank, seed=1)
    assert [len(p) for p in ttf.fonts] == [len(TTF_FACES)] * 10 and [len(p) for p in hershey.fonts] == [64] * 10
    a, b = ttf(3), hershey(3)
    assert (a.digits == b.digits).all() and not (a.image == b.image).all()  # same digits, other shapes
    # hershey is what the runs before the field rendered: out of the digest, as if the field were not there
    assert "faces" not in spec_dict(RenderConfig(faces="hershey")) and spec_dict(RenderConfig())["faces"] == "ttf"
    assert resolve_config(faces="hershey", glyphs=glyphs).digest() != resolve_config(glyphs=glyphs).digest()


def test_glyph_fields_a_layout_never_reads_stay_out_of_digests_and_pixels(bank):
    """Handwriting reads neither font_ratio nor faces, fonts not font_ratio: the same pixels and the same
    digest (`--glyphs handwriting` is the default before the thirty-fifth round, runs and caches included);
    a mix reads both."""
    hand = RenderConfig(glyphs="handwriting")  # today's font_ratio 0.15 and TrueType faces, unread
    earlier = RenderConfig(glyphs="handwriting", font_ratio=0.3, faces="hershey")
    assert (Renderer(hand, bank, seed=2)(4).image == Renderer(earlier, bank, seed=2)(4).image).all()
    assert spec_dict(hand) == spec_dict(earlier) and "faces" not in spec_dict(hand)
    assert resolve_config(glyphs="handwriting").digest() == \
        resolve_config(glyphs="handwriting", font_ratio=0.3, faces="hershey").digest()
    assert resolve_config(glyphs="fonts", font_ratio=0.6).digest() == resolve_config(glyphs="fonts").digest()
    assert resolve_config(glyphs="fonts", faces="hershey").digest() != resolve_config(glyphs="fonts").digest()
    assert resolve_config(font_ratio=0.3).digest() != resolve_config().digest()  # a mix reads its share


def test_default_glyphs_are_mixed_and_the_test_layouts_keep_handwriting(bank):
    """Since the thirty-fifth round training renders 15 % printed TrueType glyphs; the layouts the demo and
    the evaluation sets render from (course, tight) keep handwriting alone, their pixels as before."""
    cfg = RenderConfig()
    assert (cfg.glyphs, cfg.font_ratio, cfg.faces) == ("mixed", 0.15, "ttf") and LAYOUTS["train"] == cfg
    printed = {(g.shape, g.tobytes()) for pool in ttf_glyphs() for g in pool}
    r = Renderer(cfg, bank, seed=0)
    drawn = [r._plan(d, np.random.default_rng(i).random(7), np.random.default_rng(i))[0] for i in range(400) for d in [i % 10]]
    share = np.mean([(g.shape, g.tobytes()) in printed for g in drawn])
    assert 0.1 < share < 0.2  # font_ratio of the glyphs printed, the rest from the bank
    for name in ("course", "tight"):
        layout = LAYOUTS[name]
        assert (layout.glyphs, layout.font_ratio, layout.faces) == ("handwriting", 0.3, "hershey")
        assert Renderer(layout, bank, seed=0).fonts is None


def test_render_digits_given(bank):
    r = Renderer(LAYOUTS["course"], bank)
    o = r.render_digits(np.array([9, 9, 9, 9]), np.random.default_rng(0))
    assert o.sum == 36


def test_cell_placement_keeps_mnist_margins(bank):
    """cell=True pastes whole 28x28 cells: ink rarely reaches a box's left or right edge; ink boxes always do."""
    def edge_ink(cell):
        cfg = replace(LAYOUTS["course"], cell=cell, gap=(0.5, 0.5), rotation=(0.0, 0.0), shear=(0.0, 0.0))
        r, hits = Renderer(cfg, bank, seed=1), []
        for i in range(30):
            o = r(i)
            for x0, y0, x1, y1 in o.boxes:
                patch = o.image[y0:y1, x0:x1]
                hits.append(patch[:, 0].max() > 60 or patch[:, -1].max() > 60)
        return np.mean(hits)
    assert edge_ink(cell=True) < 0.05 and edge_ink(cell=False) > 0.6


def test_coherent_images_share_one_size(bank):
    """coherence=1: every image draws one size for its four digits (each within a quarter of the range);
    coherence=0: each digit its own. Same ranges, so the spread across images stays comparable."""
    def spreads(coherence):
        cfg = replace(RenderConfig(), coherence=coherence, crowded=0.0, rotation=(0.0, 0.0), shear=(0.0, 0.0),
                      elastic=0.0, stroke=(0, 0), gap=(1.0, 1.0))
        r = Renderer(cfg, bank, seed=2)
        heights = np.array([r(i).boxes[:, 3] - r(i).boxes[:, 1] for i in range(150)], float)
        return heights.std(1).mean(), heights.mean(1).std()
    within_1, across_1 = spreads(1.0)
    within_0, across_0 = spreads(0.0)
    assert within_1 < 0.5 * within_0 and across_1 > 1.3 * across_0  # theory: 1 / 4 and 1.5


def test_overlap_layout_overlaps(bank):
    r = Renderer(LAYOUTS["tight"], bank)
    overlaps = [(r(i).boxes[1:, 0] < r(i).boxes[:-1, 2]).any() for i in range(50)]
    assert np.mean(overlaps) > 0.8


def test_render_npz_roundtrip(tmp_path):
    secs = render_npz(40, tmp_path / "s.npz", "train", "mixed", seed=1)
    s = load_npz(tmp_path / "s.npz")
    assert len(s) == 40 and s.digits is not None and (s.digits.sum(1) == s.sums).all() and secs > 0


def test_crowded_images_are_small_and_overlap_within_the_ranges(bank):
    """crowded=1 (every image coherent): sizes from the low third of glyph_height, gaps from its
    overlapping part; crowded=0 draws no extra number, so default renders keep their pixels."""
    base = replace(RenderConfig(), coherence=1.0, crowded=0.0, rotation=(0.0, 0.0), shear=(0.0, 0.0), elastic=0.0,
                   stroke=(0, 0))
    plain, crowded = Renderer(base, bank, seed=4), Renderer(replace(base, crowded=1.0), bank, seed=4)
    h = lambda r: np.array([(r(i).boxes[:, 3] - r(i).boxes[:, 1]).mean() for i in range(120)])  # noqa: E731
    hp, hc = h(plain), h(crowded)
    lo, hi = base.glyph_height
    assert hc.mean() < 0.7 * hp.mean()  # theory: a mean draw of 1/6 of the range instead of 1/2 (0.63x)
    assert hc.max() <= (lo + (hi - lo) / 3) * base.height + 2  # inside the low third of the range
    overlapping = [(crowded(i).boxes[1:, 0] < crowded(i).boxes[:-1, 2]).mean() for i in range(120)]
    assert np.mean(overlapping) > 0.9  # every gap < 0 (rounding to pixels can make one touch instead)
    # crowded draws its number only when on: at 0 the renders are those from before the knob existed
    zero = Renderer(replace(RenderConfig(), crowded=0.0), bank, seed=4)
    assert any(not np.array_equal(zero(i).image, Renderer(RenderConfig(), bank, seed=4)(i).image) for i in range(40))
    coherent_free = Renderer(replace(RenderConfig(), crowded=0.0, coherence=0.0), bank, seed=4)
    assert all(np.array_equal(coherent_free(i).image,
                              Renderer(replace(RenderConfig(), crowded=1.0, coherence=0.0), bank, seed=4)(i).image)
               for i in range(20))  # no coherent image, nothing crowded, not one random number more


def test_rescanned_glyphs_lose_fine_detail_in_place(bank):
    """rescan=1: every glyph drawn down to rescan_px pixels and back up: same digits, same boxes, about
    the same ink, far less fine detail (the Laplacian's energy); rescan=0 leaves the glyphs sharp."""
    import cv2
    base = replace(RenderConfig(), glyph_height=(0.8, 1.0), elastic=0.0, blur_p=0.0, noise_p=0.0, contrast=(1.0, 1.0),
                   stroke=(0, 0))
    sharp, soft = Renderer(base, bank, seed=6), Renderer(replace(base, rescan=1.0, rescan_px=(7.0, 7.0)), bank, seed=6)
    detail = lambda im: float(np.abs(cv2.Laplacian(im.astype(np.float32), cv2.CV_32F)).mean())  # noqa: E731
    ratios = []
    for i in range(12):
        a, b = sharp(i), soft(i)
        assert np.array_equal(a.digits, b.digits) and np.array_equal(a.boxes, b.boxes)
        assert 0.75 < b.image.sum() / a.image.sum() < 1.25
        ratios.append(detail(b.image) / detail(a.image))
    assert max(ratios) < 0.9 and np.mean(ratios) < 0.75, ratios


def test_solo_keeps_each_glyph_alone_without_changing_the_image(bank):
    """solo=True: the image is the same pixels; on a clean layout each glyph alone lies in its box and
    the glyphs alone, overlaid, are the image; with noise each alone carries the image's own noise."""
    clean = replace(RenderConfig(), blur_p=0.0, noise_p=0.0, contrast=(1.0, 1.0), crowded=1.0)
    noisy = replace(RenderConfig(), blur_p=0.0, noise_p=1.0, noise_std=(20.0, 20.0))
    for cfg in (clean, noisy):
        plain, solo = Renderer(cfg, bank, seed=2)(3), Renderer(cfg, bank, seed=2, solo=True)(3)
        assert plain.solo is None and len(solo.solo) == 4
        assert np.array_equal(plain.image, solo.image) and np.array_equal(plain.boxes, solo.boxes)
    r = Renderer(clean, bank, seed=2, solo=True)(3)
    assert np.array_equal(np.maximum.reduce(r.solo), r.image)
    for alone, (x0, y0, x1, y1) in zip(r.solo, r.boxes):
        assert 0 < alone[y0:y1, x0:x1].astype(int).sum() == alone.astype(int).sum()
        assert not np.array_equal(alone, r.image)  # the others are gone (crowded: they overlap this box)
    n = Renderer(noisy, bank, seed=2, solo=True)(3)
    outside = np.ones(n.image.shape, bool)
    for x0, y0, x1, y1 in n.boxes:
        outside[y0:y1, x0:x1] = False  # the background: noise only, in the image and in each glyph alone
    assert outside.any() and all(np.array_equal(a[outside], n.image[outside]) for a in n.solo)


def test_crowded_clean_leaves_crowded_images_unfinished_and_the_others_as_they_were(bank):
    """crowded_clean: a crowded image skips blur, noise and contrast (same digits, same boxes, the same
    glyphs); every image that is not crowded keeps its pixels."""
    rough = replace(RenderConfig(), coherence=1.0, crowded=0.5, blur_p=1.0, noise_p=1.0, contrast=(0.3, 0.3),
                    crowded_clean=False)
    dirty, clean = Renderer(rough, bank, seed=6), Renderer(replace(rough, crowded_clean=True), bank, seed=6)
    unfinished = Renderer(replace(rough, crowded=1.0, blur_p=0.0, noise_p=0.0, contrast=(1.0, 1.0)), bank, seed=6)
    changed = 0
    for i in range(40):
        a, b = dirty(i), clean(i)
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.digits, b.digits)
        if np.array_equal(a.image, b.image):
            continue
        changed += 1
        assert np.array_equal(b.image, unfinished(i).image)  # the crowded image with the finish off, pixel for pixel
        assert a.image.max() <= 0.3 * 255 + 120 and b.image.max() >= 200  # full contrast, no veil of noise
        assert (b.image == 0).mean() > 0.85 and (a.image == 0).mean() < 0.75  # a black background: no noise
    assert 8 <= changed <= 32  # about half the images are crowded


def test_morph_bends_a_glyph_toward_another_of_its_digit_without_breaking_it(bank):
    """`_morph` follows the optical flow between two glyphs of a digit: at 0 the glyph as it was, further along
    ink closer to the other glyph's (stretched onto its box), its strokes still one piece; a glyph the warp
    leaves without ink (here: ink too faint to count) comes back as it was."""
    import cv2
    from mlns_fast.data.render import _morph, bank_glyphs
    pools = bank_glyphs(bank)
    ink = lambda g: (g >= 128).astype(np.uint8)  # noqa: E731
    iou = lambda a, b: (ink(a) & ink(b)).sum() / (ink(a) | ink(b)).sum()  # noqa: E731
    for d in (0, 4, 7):
        a, b = pools[d][3], pools[d][11]
        b_on_a = cv2.resize(b, a.shape[::-1], interpolation=cv2.INTER_LINEAR)
        assert iou(a, b_on_a) < 0.45  # two writers' shapes
        assert np.array_equal(_morph(a, b, 0.0), a)
        bent = _morph(a, b, 1.0)
        assert bent.dtype == np.uint8 and abs(bent.shape[0] - a.shape[0]) <= 4 and abs(bent.shape[1] - a.shape[1]) <= 8
        assert iou(cv2.resize(bent, a.shape[::-1]), b_on_a) > iou(a, b_on_a) + 0.08
        assert cv2.connectedComponents(ink(bent))[0] == cv2.connectedComponents(ink(a))[0]  # no stroke cut
    faint = np.full((20, 12), 100, np.uint8)
    assert _morph(faint, pools[1][0], 0.5) is faint


@pytest.mark.parametrize("field, reach, bad", [("morph", {"morph_mix": (0.5, 0.5)}, {"morph": 1.5}),
                                              ("nib", {"nib_len": (0.1, 0.1)}, {"nib_len": (0.1, 0.9)})])
def test_glyph_styles_keep_the_digits_and_off_leave_pixels_alone(bank, field, reach, bad):
    """A glyph style at 1 (morph: bent toward another glyph of its digit; nib: drawn with a flat pen) changes
    every image, never its digits or the canvas; at 0 it draws no extra randomness, so the default's renders keep
    their pixels whatever its other fields say (and its config digest: the fields are new)."""
    base = RenderConfig()
    assert field not in spec_dict(base) and not set(reach) & set(spec_dict(base))
    assert spec_dict(replace(base, **{field: 0.3}))[field] == 0.3
    plain, again, styled = (Renderer(base, bank, seed=2), Renderer(replace(base, **reach), bank, seed=2),
                            Renderer(replace(base, **{field: 1.0}), bank, seed=2))
    changed = 0
    for i in range(10):
        a, b, m = plain(i), again(i), styled(i)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.digits, m.digits)
        assert m.image.shape == a.image.shape and (m.boxes[:, 2] <= a.image.shape[1]).all()
        changed += not np.array_equal(a.image, m.image)
    assert changed == 10
    for wrong in (bad, {field: -0.1}):
        with pytest.raises(ConfigError):
            replace(base, **wrong)


def test_nib_widens_strokes_across_the_pen_and_leaves_those_along_it():
    """`_nib` dilates along a line at the pen's angle: with a level nib a vertical bar (across the pen) comes out
    about the nib's length wider, a level bar (along it) about as thick as it was; under two pixels nothing is
    drawn, and a patch that outgrows the canvas is drawn down into it."""
    from mlns_fast.data.render import _nib
    cross = np.zeros((30, 30), np.uint8)
    cross[3:27, 14:16] = 255  # a vertical bar, 2 px wide
    cross[14:16, 3:27] = 255  # a level bar, 2 px thick
    level = _nib(cross, 7, 0.0, (40, 168))
    ink = level >= 128
    mid = level.shape[0] // 2
    vertical_width = ink[3].sum()  # a row well above the level bar: the vertical bar's width
    level_thickness = ink[:, 2].sum()  # a column beside the vertical bar: the level bar's thickness
    assert 6 <= vertical_width <= 9 and level_thickness <= 3 and ink[mid].sum() >= 24
    upright = _nib(cross, 7, np.pi / 2, (40, 168)) >= 128  # a vertical nib: the other way round
    assert upright[:, 2].sum() >= 6 and upright[4].sum() <= 3
    assert _nib(cross, 1.4, 0.3, (40, 168)) is cross
    tall = np.zeros((40, 10), np.uint8)
    tall[:, 4:6] = 255
    assert _nib(tall, 9, np.pi / 2, (40, 168)).shape[0] <= 40
