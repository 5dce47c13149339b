import pytest

from mlns_fast.config import (HANDWRITTEN, RenderConfig, RunConfig, config_from_dict, load_run_config, resolve_config,
                              spec_dict, write_toml)
from mlns_fast.errors import ConfigError


def test_no_flags_resolve_to_the_defaults_and_print_config_shows_them(capsys):
    from mlns_fast.cli import main
    assert resolve_config() == RunConfig()
    assert main(["train", "--print-config"]) == 0  # nothing is trained: no demo set, no run folder
    out = capsys.readouterr().out
    assert config_from_dict(__import__("tomllib").loads(out), "printed") == RunConfig()
    assert main(["train", "--print-config", "--epochs", "3", "--arch", "resnet18"]) == 0
    printed = config_from_dict(__import__("tomllib").loads(capsys.readouterr().out), "printed")
    assert (printed.train.epochs, printed.model.arch, printed.train.lr) == (3, "resnet18", RunConfig().train.lr)


def test_cli_beats_file_beats_defaults(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('name = "fromfile"\n[train]\nepochs = 5\nlr = 0.01\n[model]\narch = "resnet18"\n')
    cfg = resolve_config(str(f), epochs=7, name=None)
    assert cfg.train.epochs == 7          # CLI
    assert cfg.train.lr == 0.01           # file
    assert cfg.model.arch == "resnet18"   # file
    assert cfg.train.wd == RunConfig().train.wd  # default
    assert cfg.name == "fromfile"


def test_written_config_reads_back_identically(tmp_path):
    cfg = resolve_config(arch="convnet4", real=("a.npz", "b.npz"), ema=0.9, name="x")
    p = tmp_path / "c.toml"
    p.write_text(write_toml(cfg))
    assert load_run_config(p) == cfg
    assert load_run_config(p).digest() == cfg.digest()


def test_digest_ignores_name_but_not_settings():
    assert resolve_config(name="a").digest() == resolve_config(name="b").digest()
    assert resolve_config(lr=0.1).digest() != resolve_config().digest()


@pytest.mark.parametrize("text, msg", [
    ("[train]\nepochz = 3\n", "unknown key 'epochz'"),
    ("[train]\nepochs = 'three'\n", "epochs must be int"),
    ("[bogus]\nx = 1\n", "unknown key 'bogus'"),
    ("[train]\nepochs = true\n", "epochs must be int"),
    ("[train\n", "not valid TOML"),
])
def test_bad_toml_is_a_config_error(tmp_path, text, msg):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        resolve_config(str(f))


@pytest.mark.parametrize("flags, msg", [
    (dict(ema=1.0), "--ema"), (dict(ema=-0.1), "--ema"), (dict(epochs=0), "--epochs"), (dict(bs=-1), "--bs"),
    (dict(lr=0.0), "--lr"), (dict(head="both"), "--head"), (dict(data="web"), "--data"),
    (dict(precision="fp8"), "--precision"), (dict(mix=1.0), "--mix"), (dict(glyphs="comic"), "--glyphs"),
])
def test_out_of_range_flags_are_rejected(flags, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_config(**flags)


def test_render_section_in_file(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text("[render]\ngap = [-0.5, 0.0]\n")
    assert resolve_config(str(f)).render.gap == (-0.5, 0.0)
    f.write_text("[render]\ngap = [0.5, 0.0]\n")
    with pytest.raises(ConfigError, match="low <= high"):
        resolve_config(str(f))


def test_config_from_dict_rejects_non_table():
    with pytest.raises(ConfigError, match="must be a table"):
        config_from_dict({"train": 3}, "x")


def test_render_glyphs_in_a_file_are_honoured(tmp_path, tiny_data):
    """[render] glyphs used to be overwritten by a second copy in [data]: one home now."""
    from mlns_fast.data.loaders import build_dataloaders
    from .conftest import tiny_flags
    f = tmp_path / "fonts.toml"
    f.write_text('[render]\nglyphs = "fonts"\n')
    flags = tiny_flags(tiny_data, data="synthetic")
    cfg = resolve_config(str(f), **flags)
    assert cfg.render.glyphs == "fonts"
    r = build_dataloaders(cfg).train.dataset.renderer
    assert r.hand is None and r.fonts is not None
    assert resolve_config(str(f), glyphs="mixed").render.glyphs == "mixed"  # the flag reaches the same field


def test_old_run_configs_with_glyphs_in_data_still_load(tmp_path):
    f = tmp_path / "old.toml"
    f.write_text('[data]\nglyphs = "mixed"\nfont_ratio = 0.5\n')
    cfg = load_run_config(f)
    assert (cfg.render.glyphs, cfg.render.font_ratio) == ("mixed", 0.5)


@pytest.mark.parametrize("text, msg", [
    ("[render]\nn_digits = 3\n", r"\[render\] n_digits: the task has 4 digits per image"),
    ("[render]\nvjitter = 2.0\n", r"\[render\] vjitter must be in"),
    ("[render]\nglyph_height = 'big'\n", r"glyph_height must be a list"),
    ("[render]\nglyph_height = ['a', 'b']\n", r"glyph_height must be a number"),
    ("[render]\nstroke = [0.5, 1]\n", r"stroke must be an integer"),
    ("[train]\nlr = inf\n", r"lr must be a finite number"),
    ("[train]\nwd = nan\n", r"wd must be a finite number"),
    ("[train]\nema = nan\n", r"ema must be a finite number"),
    ("[train]\nepochs = 100000000\n", r"--epochs must be in \[1, 10000\]"),
    ("[data]\nmix = nan\n", r"mix must be a finite number"),
    ('name = "../escape"\n', r"--name '../escape'"),
])
def test_every_value_is_checked_in_one_place(tmp_path, text, msg):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg) as e:
        resolve_config(str(f))
    assert "--vjitter" not in str(e.value) and "\n" not in str(e.value)


def test_tracking_tags_and_notes_do_not_change_the_digest(tmp_path):
    base = resolve_config()
    labelled = resolve_config(track=("mlflow,tensorboard",), tracking_uri="http://x:5000", experiment="e",
                              tag=("a=b",), note="why", track_weights=True)
    assert labelled.track.track == ("mlflow", "tensorboard") and labelled.track.tags() == {"a": "b"}
    assert labelled.digest() == base.digest()
    p = tmp_path / "c.toml"
    p.write_text(write_toml(labelled))  # the [track] section is written and read back
    assert load_run_config(p) == labelled
    f = tmp_path / "t.toml"
    f.write_text('[track]\ntrack = ["tensorboard"]\ntag = ["team=x"]\n')
    assert resolve_config(str(f)).track.track == ("tensorboard",)


def test_new_training_controls_change_the_digest_only_away_from_their_defaults():
    base = resolve_config().digest()
    assert resolve_config(label_smoothing=0.0, accum=1, early_stop=0).digest() == base  # old runs keep theirs
    assert len({base, resolve_config(label_smoothing=0.1).digest(), resolve_config(accum=2).digest(),
                resolve_config(early_stop=3).digest()}) == 4


@pytest.mark.parametrize("flags, msg", [
    (dict(track=("wandb",)), "--track must be among mlflow, tensorboard"),
    (dict(tag=("novalue",)), "--tag 'novalue': write KEY=VALUE"),
    (dict(tag=("=v",)), "KEY=VALUE"),
    (dict(label_smoothing=1.0), "--label-smoothing"),
    (dict(accum=0), "--accum"),
    (dict(early_stop=-1), "--early-stop"),
    (dict(experiment=" "), "--experiment"),
])
def test_bad_tracking_and_control_values(flags, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_config(**flags)


def test_a_run_recorded_before_a_new_default_keeps_what_it_did(tmp_path):
    """`[render] crowded` (0.75), `rescan` (0.3), `crowded_clean` (true), `faces` (ttf), `[model] zoom` (3) and
    `ink_map` (lines, trained on box) became defaults after runs were recorded without them: a run's config.toml
    without them reads back as what that run trained on, its digest stays the one it had, and a user's config file
    without them gets today's default."""
    old = resolve_config(str(_toml(tmp_path / "f.toml", "[model]\nzoom = 1.0\nink_map = \"box\"\n[render]\n"
                                                        "crowded = 0.0\nrescan = 0.0\ncrowded_clean = false\n"
                                                        "glyphs = \"mixed\"\nfaces = \"hershey\"\n")))
    assert (old.model.ink_map, old.model.ink_map_train) == ("box", "same")  # box trained on box: one spelling
    text = "\n".join(line for line in write_toml(old).splitlines()
                     if not line.startswith(("crowded =", "rescan =", "zoom =", "crowded_clean =", "ink_map", "faces")))
    run_file = _toml(tmp_path / "config.toml", text)
    back = load_run_config(run_file)
    assert (back.render.crowded, back.render.rescan, back.model.zoom, back.render.crowded_clean) == (0.0, 0.0, 1.0, False)
    assert back.render.faces == "hershey" and back == old and old.digest() != RunConfig().digest()
    mine = resolve_config(str(run_file))  # a user's file: today's defaults
    assert (mine.render.crowded, mine.render.rescan, mine.model.zoom, mine.render.crowded_clean) == (0.75, 0.3, 3.0, True)
    assert (mine.model.ink_map, mine.model.ink_map_train, mine.render.faces) == ("lines", "box", "ttf")
    # the digest of a run without the field is computed as before the field existed
    import hashlib, json
    d = {s: {k: list(v) if isinstance(v, tuple) else v for k, v in sec.items()}
         for s, sec in old.to_dict().items() if s not in ("track", "name") and isinstance(sec, dict)}
    from dataclasses import fields
    from mlns_fast.config import SECTIONS
    for sec, cls in SECTIONS.items():
        for f in fields(cls):
            if f.metadata.get("since") and sec in d:
                d[sec].pop(f.name)  # every field added since: the old run sits at each one's earlier value
    assert "crowded" not in d["render"] and "zoom" not in d["model"] and "label_smoothing" not in d["train"]
    assert "ink_map" not in d["model"] and "ink_map_train" not in d["model"] and "faces" not in d["render"]
    assert old.digest() == hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def test_cache_keys_ignore_new_fields_that_change_nothing():
    """A cache key (`spec_dict`) leaves out a `since` field at its earlier value -- a pair too, which a
    section dict holds as a list -- and keeps it once it changes what is rendered."""
    plain = spec_dict(RenderConfig())
    assert "rescan" in plain and "rescan_px" not in plain and "glyph_height" in plain  # rescan's default is new
    assert "rescan" not in spec_dict(RenderConfig(rescan=0.0))
    assert spec_dict(RenderConfig(rescan_px=(5.0, 9.0)))["rescan_px"] == [5.0, 9.0]



def test_round_files_keep_the_glyphs_their_runs_were_made_with():
    """Since the thirty-fifth round the default renders 15 % printed TrueType glyphs: every earlier round file
    pins the glyphs its runs were made with (handwriting, font_ratio 0.3, Hershey faces), so it still names the
    same runs; the few rows that printed name their glyphs, and the new default is the thirty-fourth round's
    TrueType recipe, the same experiment seed for seed."""
    from pathlib import Path
    from mlns_fast.suite import load_suite
    root = Path(__file__).resolve().parents[1] / "experiments"
    printed = {}
    for f in sorted(root.glob("*.toml")):
        if f.name == "sweep.toml":  # a study around today's defaults, not a record of runs
            continue
        printed |= {c.name: (c.render.glyphs, c.render.font_ratio, c.render.faces)
                    for c in load_suite(f) if c.render.glyphs != "handwriting"}
    assert printed == {"abl-fonts-only": ("fonts", 0.15, "hershey"), "fonts-s0": ("fonts", 0.15, "hershey"),
                       "fonts-s1": ("fonts", 0.15, "hershey"), "r35-ttf15-s3": ("mixed", 0.15, "ttf"),
                       "r35-ttf15-s4": ("mixed", 0.15, "ttf"), "r36-ttf30-s1": ("mixed", 0.3, "ttf"),
                       "r36-ttf30-s3": ("mixed", 0.3, "ttf"),
                       **{n: ("mixed", 0.15, "ttf") for n in ("r36-r18-prune1-s0", "r36-r18-prune1-s1", "r36-default-s2",
                                                              "r36-r50-prune1-s0", "r37-r18-prune2-s0", "r37-r18-prune2-s1",
                                                              "r37-r18-prune2-e8-s0", "r37-r18-prune2-e8-s1",
                                                              "r37-r50-prune2-s0", "r37-r50-prune2-s1", "r38-r50-prune1-s1",
                                                              "r40-e8-s0", "r40-e8-s1", "r40-e8-s2", "r41-auto-s0",
                                                              "r41-auto-s1", "r41-auto-s2", "r41-auto-s3",
                                                              "r41-default-s0", "r41-default-s1", "r41-default-s3",
                                                              "r44-lean-s0", "r44-lean-s1", "r44-bs256-s0", "r44-bs256-s1",
                                                              "r44-bs256-s2", "r44-bs256-s3",
                                                              "r45-bs256-lr4p2e3-s1", "r45-bs256-lr4p2e3-s3",
                                                              "r45-bs256-body07-s1", "r45-bs256-body07-s3",
                                                              "r46-morph5-s0", "r46-morph5-s1", "r47-nib3-s0",
                                                              "r47-nib3-s1", "r48-default-s1", "r48-nib15-s0",
                                                              "r48-nib15-s1", "r48-nib15-s2", "r49-default-s2",
                                                              "r49-default-s3", "r50-default-s0", "r50-default-s1",
                                                              "r50-default-s2", "r50-default-s3",
                                                              "r50-r18-prune2-e8-s0", "r50-r18-prune2-e8-s1",
                                                              "r50-r18-prune2-e7-s0", "r52-p75-s0", "r52-p75-s1",
                                                              "r52-p75-s2", "r52-p75-s3", "r52-r18-prune2-e8-p75-s0",
                                                              "r52-r18-prune2-e8-p75-s1", "r53-fo25-s0", "r53-fo25-s1",
                                                              "r53-fo50-s0", "r53-fo50-s1",
                                                              "r53-r18-prune2-e8-fo25-s0", "r54-fa25-s0",
                                                              "r54-fa25-s1", "r54-r50-prune2-s0")},
                       **{f"r33-mixed15-s{s}": ("mixed", 0.15, "hershey") for s in range(3)},
                       **{f"r34-ttf15-s{s}": ("mixed", 0.15, "ttf") for s in range(3)}}
    ttf = load_suite(root / "round34.toml")
    assert [resolve_config(seed=s).digest() for s in range(3)] == [c.digest() for c in ttf]
    assert resolve_config(glyphs="handwriting").digest() == \
        load_suite(root / "round30.toml")[3].digest()  # r30-default-s0: the default before
    # the thirty-fifth round: a fourth and a fifth seed of each, today's default and the default before
    more = load_suite(root / "round35.toml")
    assert [c.name for c in more] == ["r35-ttf15-s3", "r35-ttf15-s4", "r35-handwriting-s3", "r35-handwriting-s4"]
    assert [c.digest() for c in more[:2]] == [resolve_config(seed=s).digest() for s in (3, 4)]
    assert _override(more[2], train={"seed": 0}).digest() == load_suite(root / "round30.toml")[3].digest()


def test_round36_to_50_rows_change_only_what_they_name():
    """Each row of the thirty-sixth to fiftieth rounds is an earlier run with the fields its note names
    changed and nothing else, so its figures are set beside the right run."""
    from pathlib import Path
    from mlns_fast.suite import load_suite
    root = Path(__file__).resolve().parents[1] / "experiments"
    ttf = load_suite(root / "round34.toml")
    # the thirty-sixth round: twice the printed share, and the timm budgets of the thirty-first round at today's
    # glyphs; each differs from an earlier run only in what it names
    r36 = load_suite(root / "round36.toml")
    assert [c.name for c in r36] == ["r36-ttf30-s1", "r36-ttf30-s3", "r36-default-s2", "r36-r18-prune1-s0",
                                     "r36-r18-prune1-s1", "r36-r18-prune1-hand-s0", "r36-r50-prune1-s0"]
    assert [_override(c, render={"font_ratio": 0.15}).digest() for c in r36[:2]] == \
        [resolve_config(seed=s).digest() for s in (1, 3)]
    assert r36[2].digest() == resolve_config(seed=2).digest() == ttf[2].digest()  # r34-ttf15-s2's configuration
    timm = load_suite(root / "round31.toml")
    hand = {"glyphs": "handwriting"}
    assert r36[5].digest() == _override(r36[3], render=hand).digest() == timm[0].digest() != r36[3].digest()
    assert _override(r36[4], render=hand).digest() == timm[1].digest() != r36[4].digest()
    assert _override(r36[6], render=hand).digest() == timm[2].digest() != r36[6].digest()
    # the thirty-seventh round: the same timm recipes read at stride 8 (two stages pruned), the resnet18 one also
    # for eight epochs; each is a thirty-sixth-round run with prune_stages (and epochs) changed and nothing else
    r37 = load_suite(root / "round37.toml")
    assert [c.name for c in r37] == ["r37-r18-prune2-s0", "r37-r18-prune2-s1", "r37-r18-prune2-e8-s0",
                                     "r37-r18-prune2-e8-s1", "r37-r50-prune2-s0", "r37-r50-prune2-s1"]
    one = {"prune_stages": 1}
    assert [_override(c, model=one).digest() for c in r37[:2]] == [r36[3].digest(), r36[4].digest()]
    assert [_override(c, model=one, train={"epochs": 5}).digest() for c in r37[2:4]] == \
        [r36[3].digest(), r36[4].digest()]
    assert _override(r37[4], model=one).digest() == r36[6].digest() != r37[4].digest()
    assert _override(r37[5], train={"seed": 0}).digest() == r37[4].digest() != r37[5].digest()
    assert (r37[0].model.prune_stages, r37[2].train.epochs, r37[4].model.arch) == (2, 8, "resnet50")
    # the thirty-eighth round: the thirty-sixth round's resnet50 at seed 1, the pair of r37-r50-prune2-s1
    r38 = load_suite(root / "round38.toml")
    assert [c.name for c in r38] == ["r38-r50-prune1-s1"]
    assert _override(r38[0], train={"seed": 0}).digest() == r36[6].digest() != r38[0].digest()
    assert _override(r38[0], model={"prune_stages": 2}).digest() == r37[5].digest()
    # the fortieth round: today's default at eight epochs, seeds 0-2
    r40 = load_suite(root / "round40.toml")
    assert [c.name for c in r40] == ["r40-e8-s0", "r40-e8-s1", "r40-e8-s2"]
    assert [_override(c, train={"epochs": 9}).digest() for c in r40] == [resolve_config(seed=s).digest() for s in range(3)]
    assert [c.train.epochs for c in r40] == [8, 8, 8] and r40[0].digest() != resolve_config().digest()
    # the forty-first round: today's default with a pool as large as the run draws, seeds 0-3 (3: the forty-second
    # round), and the default itself, seeds 0, 1 and 3
    r41 = load_suite(root / "round41.toml")
    assert [c.name for c in r41] == ["r41-auto-s0", "r41-auto-s1", "r41-auto-s2", "r41-auto-s3", "r41-default-s0",
                                     "r41-default-s1", "r41-default-s3"]
    assert [_override(c, data={"synth_pool": 0}).digest() for c in r41[:4]] == \
        [resolve_config(seed=s).digest() for s in range(4)]
    assert [c.data.synth_pool for c in r41] == [-1] * 4 + [0] * 3 and r41[0].digest() != resolve_config().digest()
    assert [c.digest() for c in r41[4:]] == [resolve_config(seed=s).digest() for s in (0, 1, 3)]
    # the forty-fourth round: today's default with the first stage half as wide, and with twice the batch at twice
    # the lr (seeds 0 and 1, and 0-3: seed 3 in the forty-fifth round)
    r44 = load_suite(root / "round44.toml")
    assert [c.name for c in r44] == ["r44-lean-s0", "r44-lean-s1"] + [f"r44-bs256-s{s}" for s in range(4)]
    assert [_override(c, model={"arch": "mlns_cnn"}).digest() for c in r44[:2]] == \
        [resolve_config(seed=s).digest() for s in range(2)]
    assert [_override(c, data={"bs": 128}, train={"lr": 3e-3}).digest() for c in r44[2:]] == \
        [resolve_config(seed=s).digest() for s in range(4)]
    assert [(c.model.arch, c.data.bs, c.train.lr) for c in r44] == [("mlns_cnn_lean", 128, 3e-3)] * 2 + \
        [("mlns_cnn", 256, 6e-3)] * 4
    # the forty-fifth round: twice the batch at the square root of twice the lr, and with the backbone alone at
    # it (--body-lr 0.7), seeds 1 and 3
    r45 = load_suite(root / "round45.toml")
    assert [c.name for c in r45] == ["r45-bs256-lr4p2e3-s1", "r45-bs256-lr4p2e3-s3", "r45-bs256-body07-s1",
                                     "r45-bs256-body07-s3"]
    assert [_override(c, train={"lr": 6e-3}).digest() for c in r45[:2]] == [r44[3].digest(), r44[5].digest()]
    assert [_override(c, train={"body_lr": 1.0}).digest() for c in r45[2:]] == [r44[3].digest(), r44[5].digest()]
    assert [(c.data.bs, c.train.lr, c.train.body_lr) for c in r45] == [(256, 4.2e-3, 1.0)] * 2 + [(256, 6e-3, 0.7)] * 2
    # the forty-sixth round: today's default with half the glyphs bent toward another of their digit, seeds 0 and 1
    r46 = load_suite(root / "round46.toml")
    assert [c.name for c in r46] == ["r46-morph5-s0", "r46-morph5-s1"]
    assert [_override(c, render={"morph": 0.0}).digest() for c in r46] == [resolve_config(seed=s).digest() for s in (0, 1)]
    assert [(c.render.morph, c.render.morph_mix) for c in r46] == [(0.5, (0.3, 1.0))] * 2
    # the forty-seventh round: today's default with three glyphs in ten drawn with a flat pen, seeds 0 and 1
    r47 = load_suite(root / "round47.toml")
    assert [c.name for c in r47] == ["r47-nib3-s0", "r47-nib3-s1"]
    assert [_override(c, render={"nib": 0.0}).digest() for c in r47] == [resolve_config(seed=s).digest() for s in (0, 1)]
    assert [(c.render.nib, c.render.nib_len) for c in r47] == [(0.3, (0.06, 0.18))] * 2
    # the forty-eighth round: the default's seed 1 (nothing changed), and the flat pen at half that share, seeds 0-2
    r48 = load_suite(root / "round48.toml")
    assert [c.name for c in r48] == ["r48-default-s1", "r48-nib15-s0", "r48-nib15-s1", "r48-nib15-s2"]
    assert r48[0].digest() == resolve_config(seed=1).digest() == _override(r47[1], render={"nib": 0.0}).digest()
    assert [_override(c, render={"nib": 0.0}).digest() for c in r48[1:]] == \
        [resolve_config(seed=s).digest() for s in range(3)]
    assert [(c.render.nib, c.render.nib_len) for c in r48[1:]] == [(0.15, (0.06, 0.18))] * 3
    # the forty-ninth round: the default's seeds 2 and 3 (nothing changed), seed 2 the pair of r48-nib15-s2
    r49 = load_suite(root / "round49.toml")
    assert [c.name for c in r49] == ["r49-default-s2", "r49-default-s3"]
    assert [c.digest() for c in r49] == [resolve_config(seed=s).digest() for s in (2, 3)]
    assert r49[0].digest() == _override(r48[3], render={"nib": 0.0}).digest() and r49[0].render.nib == 0.0
    # the fiftieth round, on another host: the default's seeds 0-3 as they are, and resnet18's budget recipe as the
    # thirty-seventh round ran it (r37-r18-prune2-e8, seeds 0 and 1), so each is set beside the same configuration
    # elsewhere; then that recipe at seven epochs and nothing else changed
    r50 = load_suite(root / "round50.toml")
    assert [c.name for c in r50] == [f"r50-default-s{s}" for s in range(4)] + \
        ["r50-r18-prune2-e8-s0", "r50-r18-prune2-e8-s1", "r50-r18-prune2-e7-s0"]
    assert [c.digest() for c in r50[:4]] == [resolve_config(seed=s).digest() for s in range(4)]
    assert r50[2].digest() == r49[0].digest() and r50[3].digest() == r49[1].digest()
    assert [c.digest() for c in r50[4:6]] == [c.digest() for c in r37[2:4]] == \
        [resolve_config(arch="resnet18", prune_stages=2, epochs=8, lr=0.01, seed=s).digest() for s in (0, 1)]
    assert (r50[4].model.arch, r50[4].model.prune_stages, r50[4].train.epochs) == ("resnet18", 2, 8)
    assert r50[6].digest() == _override(r50[4], train={"epochs": 7}).digest() != r50[4].digest()  # epochs alone
    # the fifty-second round: progressive resizing on the default (seeds 0-3) and on resnet18's eight-epoch recipe
    # (seeds 0 and 1), each run the fiftieth round's same seed but for --progressive
    r52 = load_suite(root / "round52.toml")
    assert [c.name for c in r52] == [f"r52-p75-s{s}" for s in range(4)] + \
        [f"r52-r18-prune2-e8-p75-s{s}" for s in (0, 1)]
    assert [_override(c, train={"progressive": 1.0}).digest() for c in r52] == [c.digest() for c in r50[:6]]
    assert {(c.train.progressive, c.train.progressive_until) for c in r52} == {(0.75, 0.67)}
    assert len({c.digest() for c in r52} | {c.digest() for c in r50}) == 13  # --progressive enters the digest
    # the fifty-third round: FreezeOut by epoch on the default, each run the fiftieth round's same seed but for it
    r53 = load_suite(root / "round53.toml")
    assert [c.name for c in r53] == ["r53-fo25-s0", "r53-fo25-s1", "r53-fo50-s0", "r53-fo50-s1",
                                     "r53-r18-prune2-e8-fo25-s0"]
    assert [_override(c, train={"freeze_out": 1.0}).digest() for c in r53] == \
        [c.digest() for c in r50[:2] + r50[:2] + r50[4:5]]
    assert [c.train.freeze_out for c in r53] == [0.25, 0.25, 0.5, 0.5, 0.25]
    assert len({c.digest() for c in r53} | {c.digest() for c in r50}) == 12  # --freeze-out enters the digest
    # the fifty-fourth round: FreezeOut with each stage's lr annealed to its freeze, the fifty-third round's runs at
    # 0.25 but for --freeze-anneal; and resnet50's CPU-budget recipe on this host, the thirty-seventh round's seed 0
    r54 = load_suite(root / "round54.toml")
    assert [c.name for c in r54] == ["r54-fa25-s0", "r54-fa25-s1", "r54-r50-prune2-s0"]
    assert [_override(c, train={"freeze_anneal": False}).digest() for c in r54[:2]] == [c.digest() for c in r53[:2]]
    assert all(c.train.freeze_anneal for c in r54[:2]) and len({c.digest() for c in r54[:2] + r53}) == 7
    assert r54[2].digest() == r37[4].digest() and (r54[2].model.arch, r54[2].model.prune_stages) == ("resnet50", 2)


def _override(cfg, **sections):
    """`cfg` with some fields changed, the way a suite file's table changes them (config_from_dict on a base)."""
    return config_from_dict(sections, "test", base=cfg)


def test_every_committed_experiment_file_still_loads():
    """RESULTS.md tells a reader to rerun its rows with `mlns-fast suite experiments/<file>.toml`: every
    committed suite (and the sweep) must still parse against today's options, each run named, the
    round files' names carrying their seeds."""
    from pathlib import Path
    from mlns_fast.suite import load_suite
    from mlns_fast.sweep.spec import load_sweep
    root = Path(__file__).resolve().parents[1] / "experiments"
    files = sorted(root.glob("*.toml"))
    assert len(files) >= 20 and root / "round18.toml" in files
    for f in files:
        if f.name == "sweep.toml":
            load_sweep(f)
            continue
        cfgs = load_suite(f)
        assert cfgs and all(c.name for c in cfgs), f.name
    pruned = load_suite(root / "round18.toml")
    assert [(c.name, c.model.arch, c.model.prune_stages, c.train.seed) for c in pruned] == [
        ("r18-r18-prune1-s1", "resnet18", 1, 1)]
    nineteenth = load_suite(root / "round19.toml")
    assert [(c.name, c.model.arch, c.model.prune_stages, c.train.epochs, c.train.seed) for c in nineteenth] == [
        ("r19-r18-prune1-s0", "resnet18", 1, 5, 0), ("r19-r18-prune1-s1", "resnet18", 1, 5, 1),
        ("r19-default-e10-s0", "mlns_cnn", 0, 10, 0), ("r19-default-e10-s1", "mlns_cnn", 0, 10, 1),
        ("r19-default-e10-s2", "mlns_cnn", 0, 10, 2), ("r19-r18-prune1-e6-s0", "resnet18", 1, 6, 0)]
    twentieth = load_suite(root / "round20.toml")
    assert [(c.name, c.data.data, c.data.mix, c.data.synthetic_per_epoch, c.data.real_style, c.train.epochs,
             c.train.seed) for c in twentieth] == [
        ("r20-synth-s0", "synthetic", 0.75, 40064, 0.0, 9, 0), ("r20-mix625-s0", "mixed", 0.625, 20000, 0.0, 13, 0),
        ("r20-style-s0", "mixed", 0.75, 20000, 0.5, 9, 0), ("r20-style-s1", "mixed", 0.75, 20000, 0.5, 9, 1),
        ("r20-style-s2", "mixed", 0.75, 20000, 0.5, 9, 2), ("r20-default-s0", "mixed", 0.75, 20000, 0.0, 9, 0)]
    halves = load_suite(root / "round22.toml")
    assert [(c.name, c.model.arch, c.data.data, c.train.epochs, c.train.seed) for c in halves] == [
        ("r22-e5-s0", "mlns_cnn", "mixed", 5, 0), ("r22-e5-s1", "mlns_cnn", "mixed", 5, 1)]
    pruned50 = load_suite(root / "round23.toml")
    assert [(c.name, c.model.arch, c.model.prune_stages, c.train.epochs, c.train.lr, c.train.ema, c.train.seed)
            for c in pruned50] == [("r23-r50-prune1-s0", "resnet50", 1, 4, 0.01, 0.99, 0),
                                   ("r23-r50-prune1-s1", "resnet50", 1, 4, 0.01, 0.99, 1),
                                   ("r23-r50-prune1-e3-s0", "resnet50", 1, 3, 0.01, 0.99, 0)]
    wide = load_suite(root / "round24.toml")
    assert [(c.name, c.model.arch, c.train.epochs, c.train.seed) for c in wide] == [
        ("r24-wide-s0", "mlns_cnn_wide", 9, 0), ("r24-wide-s1", "mlns_cnn_wide", 9, 1),
        ("r24-wide-e7-s0", "mlns_cnn_wide", 7, 0), ("r24-default-s0", "mlns_cnn", 9, 0),
        ("r24-default-s1", "mlns_cnn", 9, 1)]
    wide8 = load_suite(root / "round25.toml")
    assert [(c.name, c.model.arch, c.train.epochs, c.train.seed) for c in wide8] == [
        ("r25-wide-e8-s0", "mlns_cnn_wide", 8, 0), ("r25-wide-e8-s1", "mlns_cnn_wide", 8, 1),
        ("r25-wide-e8-s2", "mlns_cnn_wide", 8, 2), ("r25-default-s2", "mlns_cnn", 9, 2),
        ("r25-r50-prune1-e3-s1", "resnet50", 3, 1)]
    assert [(c.model.prune_stages, c.train.lr, c.train.ema) for c in wide8][-1] == (1, 0.01, 0.99)
    inkrel = load_suite(root / "round27.toml")
    assert [(c.name, c.model.arch, c.model.ink_rel, c.train.epochs, c.train.seed) for c in inkrel] == [
        ("r27-inkrel-s0", "mlns_cnn", 0.15, 9, 0), ("r27-inkrel-s1", "mlns_cnn", 0.15, 9, 1),
        ("r27-inkrel-s2", "mlns_cnn", 0.15, 9, 2)]
    assert RunConfig().model.ink_rel == 0.3 and inkrel[0].digest() != RunConfig(name="r27-inkrel-s0").digest()
    # the threshold came after every earlier round: at its default it stays out of their digests
    assert "ink_rel" not in spec_dict(wide8[0].model) and spec_dict(inkrel[0].model)["ink_rel"] == 0.15
    jit = load_suite(root / "round28.toml")
    assert [(c.name, c.model.ink_rel, c.model.ink_jitter, c.train.seed) for c in jit] == [
        ("r28-inkjit-s0", 0.15, 0.3, 0), ("r28-inkjit-s1", 0.15, 0.3, 1), ("r28-inkjit-s2", 0.15, 0.3, 2)]
    assert "ink_jitter" not in spec_dict(inkrel[0].model) and spec_dict(jit[0].model)["ink_jitter"] == 0.3
    assert jit[0].digest() != inkrel[0].digest()
    lines = load_suite(root / "round30.toml")
    assert [(c.name, c.model.ink_map, c.model.ink_map_train, c.train.seed) for c in lines] == [
        ("r30-lines-s0", "lines", "same", 0), ("r30-lines-s1", "lines", "same", 1), ("r30-lines-s2", "lines", "same", 2),
        ("r30-default-s0", "lines", "box", 0), ("r30-default-s1", "lines", "box", 1), ("r30-default-s2", "lines", "box", 2)]
    # the earlier rounds pin the map they were made with: their digests are the ones recorded before the field
    assert (jit[0].model.ink_map, jit[0].model.ink_map_train) == ("box", "same")
    assert "ink_map" not in spec_dict(jit[0].model) and "ink_map_train" not in spec_dict(jit[0].model)
    assert spec_dict(lines[0].model)["ink_map"] == "lines" and "ink_map_train" not in spec_dict(lines[0].model)
    handwritten = RunConfig(name="r30-default-s0", render=RenderConfig(**HANDWRITTEN))  # the default until round 35
    assert lines[3].digest() == handwritten.digest() != lines[0].digest()
    # the thirty-first round: the timm budgets of the nineteenth / twenty-third rounds, read on line averages
    timm = load_suite(root / "round31.toml")
    assert [(c.name, c.model.arch, c.model.prune_stages, c.train.epochs, c.train.lr, c.train.seed,
             c.model.ink_map, c.model.ink_map_train) for c in timm] == [
        ("r31-r18-prune1-s0", "resnet18", 1, 5, 0.01, 0, "lines", "box"),
        ("r31-r18-prune1-s1", "resnet18", 1, 5, 0.01, 1, "lines", "box"),
        ("r31-r50-prune1-s0", "resnet50", 1, 4, 0.01, 0, "lines", "box")]
    # the same trainings as those rounds' runs: read on the 3x3 average, they are the same experiment
    boxed = [_override(c, model={"ink_map": "box"}) for c in timm]
    assert [c.digest() for c in boxed] == [nineteenth[0].digest(), nineteenth[1].digest(), pruned50[0].digest()]
    assert timm[0].digest() != nineteenth[0].digest()
    # the thirty-second round: resnet50's recipe of the thirty-first round at its second seed
    second = load_suite(root / "round32.toml")
    assert [(c.name, c.model.arch, c.model.prune_stages, c.train.epochs, c.train.lr, c.train.ema, c.train.seed)
            for c in second[:1]] == [("r32-r50-prune1-s1", "resnet50", 1, 4, 0.01, 0.99, 1)]
    assert _override(second[0], train={"seed": 0}).digest() == timm[2].digest()
    # read on the 3x3 average it is the twenty-third round's seed 1: the same training
    assert _override(second[0], model={"ink_map": "box"}).digest() == pruned50[1].digest()
    assert second[0].digest() != pruned50[1].digest()
    # and the default recipe at twice and at half its peak lr, nothing else changed
    assert [(c.name, c.model.arch, c.train.lr, c.train.epochs, c.train.seed) for c in second[1:]] == [
        ("r32-lr6e3-s0", "mlns_cnn", 0.006, 9, 0), ("r32-lr6e3-s1", "mlns_cnn", 0.006, 9, 1),
        ("r32-lr1p5e3-s0", "mlns_cnn", 0.0015, 9, 0), ("r32-lr1p5e3-s1", "mlns_cnn", 0.0015, 9, 1)]
    for c, default in zip(second[1:], [lines[3], lines[4]] * 2):
        assert _override(c, train={"lr": 3e-3}).digest() == default.digest() != c.digest()
    # the thirty-third round: printed digits beside the handwriting, the default on this round's machine, and
    # twice the re-sampled glyphs; each differs from the thirtieth round's default only in what it names
    fonts = load_suite(root / "round33.toml")
    assert [(c.name, c.render.glyphs, spec_dict(c.render)["font_ratio"], c.render.rescan, c.train.seed)
            for c in fonts] == [  # the share in effect: handwriting reads none
        ("r33-mixed15-s0", "mixed", 0.15, 0.3, 0), ("r33-mixed15-s1", "mixed", 0.15, 0.3, 1),
        ("r33-mixed15-s2", "mixed", 0.15, 0.3, 2), ("r33-default-s0", "handwriting", 0.3, 0.3, 0),
        ("r33-default-s1", "handwriting", 0.3, 0.3, 1), ("r33-default-s2", "handwriting", 0.3, 0.3, 2),
        ("r33-rescan6-s0", "handwriting", 0.3, 0.6, 0), ("r33-rescan6-s1", "handwriting", 0.3, 0.6, 1)]
    for c, default in zip(fonts, lines[3:] * 2 + lines[3:5]):
        plain = _override(c, render={"glyphs": "handwriting", "font_ratio": 0.3, "rescan": 0.3})
        assert plain.digest() == default.digest()
    assert len({c.digest() for c in fonts}) == 8 and [c.digest() for c in fonts[3:6]] == [c.digest() for c in lines[3:]]
    # the thirty-fourth round: the thirty-third's printed digits drawn from matplotlib's TrueType faces instead
    ttf = load_suite(root / "round34.toml")
    assert [(c.name, c.render.glyphs, c.render.font_ratio, c.render.faces, c.train.seed) for c in ttf] == [
        (f"r34-ttf15-s{s}", "mixed", 0.15, "ttf", s) for s in range(3)]
    for c, hershey in zip(ttf, fonts[:3]):
        assert _override(c, render={"faces": "hershey"}).digest() == hershey.digest() != c.digest()



def _toml(path, text):
    path.write_text(text)
    return path
