"""Fuzzing the CLI with generated bad inputs: every one ends in one `error:` line, exit code 2, no
traceback and nothing written. Bounded: a fixed number of examples each, no deadline per example."""
import string

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mlns_fast.cli import main
from mlns_fast.config import NAME_RE, resolve_config
from mlns_fast.data.sources import load_folder, load_npy_pair
from mlns_fast.errors import MlnsError

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _cli_refuses(capsys, runs, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 2, (args, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    assert not runs.exists() or not any(runs.iterdir()), args


@FUZZ
@given(name=st.text(alphabet=string.printable + "éü/\\.\x00", min_size=1, max_size=80))
def test_bad_names(capsys, tmp_path, name):
    assume(not NAME_RE.fullmatch(name) and "\x00" not in name and not name.startswith("-"))
    _cli_refuses(capsys, tmp_path / "runs", "train", "--quiet", "--runs-dir", tmp_path / "runs", "--name", name)


_value = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.text(max_size=8), st.lists(st.one_of(st.integers(-5, 5), st.floats(), st.text(max_size=3)),
                                                 max_size=3))
_keys = st.sampled_from(["epochs", "lr", "wd", "ema", "mix", "bs", "workers", "valid_pct", "drop", "seed", "gap",
                         "stroke", "glyph_height", "vjitter", "n_digits", "glyphs", "head", "arch", "precision",
                         "synthetic_per_epoch", "contrast", "height", "bogus"])
_toml = st.dictionaries(st.sampled_from(["data", "model", "train", "render", "extra"]),
                        st.dictionaries(_keys, _value, min_size=1, max_size=3), min_size=1, max_size=3)


@FUZZ
@given(doc=_toml)
def test_bad_toml_files(capsys, tmp_path, doc):
    import tomli_w
    f = tmp_path / "fuzz.toml"
    try:
        f.write_text(tomli_w.dumps(doc))
    except (TypeError, ValueError):  # not representable in TOML (e.g. NaN in some writers)
        assume(False)
    try:
        resolve_config(str(f))
    except MlnsError:
        pass  # the case under test: the CLI must report it in one line
    else:
        assume(False)  # a valid config would start a real training run
    _cli_refuses(capsys, tmp_path / "runs", "train", "--quiet", "--runs-dir", tmp_path / "runs", "--config", f)


_defect = st.sampled_from(["ndim", "nan", "bool", "range", "labels_range", "labels_float", "count", "empty"])


@FUZZ
@given(defect=_defect, n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_bad_arrays(capsys, tmp_path, defect, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 40, 168)).astype(np.uint8)
    y = rng.integers(0, 37, n)
    if defect == "ndim":
        x = x.reshape(n, -1)
    elif defect == "nan":
        x = x.astype(np.float32)
        x[0, 0, 0] = np.nan
    elif defect == "bool":
        x = x > 128
    elif defect == "range":
        x = x.astype(np.float64) * 3 + 1
    elif defect == "labels_range":
        y[0] = rng.choice([-1, 37, 1000])
    elif defect == "labels_float":
        y = y + 0.5
    elif defect == "count":
        y = np.append(y, 3)
    else:
        x = x[:0]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(MlnsError):
        load_npy_pair(tmp_path / "x.npy", tmp_path / "y.npy")
    spec = f"{tmp_path / 'x.npy'}:{tmp_path / 'y.npy'}"
    _cli_refuses(capsys, tmp_path / "runs", "train", "--quiet", "--runs-dir", tmp_path / "runs",
                 "--real", spec, "--valid", spec)


_cell = st.text(alphabet=string.ascii_letters + string.digits + "./\\-_ ,\"'\x7f", max_size=12)


@FUZZ
@given(rows=st.lists(st.lists(_cell, min_size=1, max_size=6), min_size=1, max_size=5))
def test_bad_labels_csv(capsys, tmp_path, rows):
    folder = tmp_path / "imgs"
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "a.png"), np.zeros((40, 168), np.uint8))
    (tmp_path / "outside.png").write_bytes((folder / "a.png").read_bytes())
    (folder / "labels.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    try:
        load_folder(folder)
    except MlnsError:
        pass
    else:
        assume(False)
    _cli_refuses(capsys, tmp_path / "runs", "train", "--quiet", "--runs-dir", tmp_path / "runs",
                 "--real", folder, "--valid", folder)
