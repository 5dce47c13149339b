"""`data harvest`: labelled glyphs cut from real training images where a reader is sure under the sum."""
import math

import numpy as np
import pytest
import torch

from mlns_fast.data.harvest import BOX, CELL, harvest_glyphs, sure_readings, to_cell
from mlns_fast.data.mnist import embedded_bank, load_bank

from .conftest import assert_user_error, flag_args, run_cli, tiny_flags

LEVELS = (70, 130, 190, 250)  # one grey level per block: a cut cell shows which block it came from


def _row(starts=(5, 40, 80, 130), widths=(12, 8, 14, 10), heights=(30, 26, 34, 22)) -> np.ndarray:
    img = np.zeros((40, 168), np.uint8)
    for x, w, h, v in zip(starts, widths, heights, LEVELS):
        img[3:3 + h, x:x + w] = v
    return img


def _logits(*readings, p=0.999) -> torch.Tensor:
    """(N, 4, 10) logits; each reading is 4 digits (sure at probability p) or per-position dicts {digit: prob}."""
    out = torch.full((len(readings), 4, 10), 1e-6)
    for i, r in enumerate(readings):
        for k, d in enumerate(r):
            probs = d if isinstance(d, dict) else {d: p}
            rest = (1 - sum(probs.values())) / (10 - len(probs))
            out[i, k] = rest
            for digit, q in probs.items():
                out[i, k, digit] = q
    return out.log()


def test_a_reading_is_kept_only_when_it_adds_up_and_the_sum_makes_it_sure():
    logits = _logits((1, 2, 3, 4),  # sure, adds up to 10: kept
                     (1, 2, 3, 4),  # sure, but the label says 11: dropped
                     ({3: 0.5, 4: 0.5}, 2, 3, 4),  # 3 or 4 at first; the sum 12 says 3 (posterior ~1): kept
                     ({3: 0.5, 4: 0.49}, {4: 0.5, 3: 0.49}, 0, 0))  # 3+4 or 4+3: both add to 7, posterior ~1/2
    sums = np.array([10, 11, 12, 7])
    kept, digits = sure_readings(logits, sums, 0.99)
    assert kept.tolist() == [True, False, True, False]
    assert digits[0].tolist() == [1, 2, 3, 4] and digits[2].tolist() == [3, 2, 3, 4]
    assert sure_readings(logits, sums, 0.4)[0].tolist() == [True, False, True, True]  # ~1/2 passes a lower bar


def test_to_cell_is_mnist_format_longer_side_20_centred():
    for h, w in ((34, 14), (10, 30), (1, 1)):
        cell = to_cell(np.full((h, w), 200, np.uint8))
        assert cell.shape == (CELL, CELL) and cell.dtype == np.uint8
        rows, cols = np.flatnonzero(cell.any(1)), np.flatnonzero(cell.any(0))
        assert max(len(rows), len(cols)) == BOX
        assert math.isclose(len(rows) / len(cols), h / w, rel_tol=0.2) or min(h, w) == 1
        assert abs((rows[0] + rows[-1]) / 2 - (CELL - 1) / 2) <= 1 and abs((cols[0] + cols[-1]) / 2 - (CELL - 1) / 2) <= 1


class _Reader(torch.nn.Module):
    """Hands out fixed logits, batch after batch, in the order images are read (a stand-in reader)."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.at = logits, 0

    def forward(self, x):
        out = self.logits[self.at:self.at + len(x)]
        self.at += len(x)
        return out


def test_harvest_cuts_the_four_digits_of_sure_images_only():
    touching = _row(starts=(5, 17, 80, 130))  # first two blocks touch: three segments, never cut
    images = np.stack([_row(), touching, _row(), _row()])
    sums = np.array([10, 10, 10, 9])
    # the reader sees only images that split in four (0, 2, 3): sure of 0, unsure of 2, 3 does not add up
    reader = _Reader(_logits((1, 2, 3, 4), ({1: 0.5, 2: 0.49}, {2: 0.5, 1: 0.49}, 3, 4), (1, 2, 3, 4)))
    found = harvest_glyphs(reader, images, sums, 0.99)
    assert (found.n_images, found.n_split, found.n_kept) == (4, 3, 1)
    assert reader.at == 3
    assert found.images.shape == (4, CELL, CELL) and found.labels.tolist() == [1, 2, 3, 4]
    assert [int(c.max()) for c in found.images] == list(LEVELS)  # each cell is its own block, in order
    assert harvest_glyphs(_Reader(_logits()), images[1:2], sums[1:2]).n_split == 0


def test_harvest_refuses_a_sum_head():
    from mlns_fast.errors import ModelError
    with pytest.raises(ModelError, match="digits head"):
        harvest_glyphs(_Reader(torch.zeros(1, 37)), _row()[None], np.array([10]))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny_data):
    runs = tmp_path_factory.mktemp("runs")
    from mlns_fast.cli import main
    assert main(["train", "--quiet", "--name", "toy", "--runs-dir", str(runs), *flag_args(tiny_flags(tiny_data))]) == 0
    return runs


def test_data_harvest_writes_a_bank_that_train_takes(capsys, tmp_path, toy_run, tiny_data):
    out = tmp_path / "bank.npz"
    code, stdout, err = run_cli(capsys, "data", "harvest", "toy", "--out", out, "--runs-dir", toy_run,
                                "--min-posterior", "0.01", "--share", "0.2")
    assert code == 0, err
    bank, synth = load_bank(str(out)), embedded_bank()
    z = np.load(out)
    harvested = z["harvested"]
    assert len(bank.labels) == len(harvested) and not harvested[:len(synth.labels)].any()
    np.testing.assert_array_equal(bank.images[:len(synth.labels)], synth.images)  # the run's bank first, unchanged
    n = int(harvested.sum())
    assert n <= round(0.2 / 0.8 * len(synth.labels))  # the share caps it
    assert f"{len(synth.labels):,} bank glyphs + {n:,} harvested" in stdout
    assert "96 read" in stdout  # the run's 96 training images, never its 48 validation ones
    if n:
        assert (tmp_path / "bank.png").is_file()
        assert bank.images[harvested].max(axis=(1, 2)).min() > 40  # every cut glyph has ink
    code, _, err = run_cli(capsys, "train", "--quiet", "--name", "on-harvest", "--runs-dir", toy_run,
                           "--bank", out, *flag_args(tiny_flags(tiny_data, epochs=1)))
    assert code == 0, err


class _Oracle(torch.nn.Module):
    """Reads the demo's true digits of each image it is given (looked up by its pixels), surely."""

    def __init__(self, samples):
        super().__init__()
        self.truth = {im.tobytes(): d for im, d in zip(samples.images, samples.digits)}

    def forward(self, x):
        keys = [(im[0] * 255).round().to(torch.uint8).numpy().tobytes() for im in x]
        return torch.stack([torch.eye(10)[torch.as_tensor(self.truth[k])] * 20 for k in keys])


def test_data_harvest_with_a_sure_reader_cuts_the_right_digits(capsys, tmp_path, toy_run, monkeypatch):
    from mlns_fast import reading
    from mlns_fast.data.demo import demo_split
    from mlns_fast.data.repack import ink_segments
    truth = demo_split("train", with_digits=True).subset(slice(0, 96))  # the toy run's training file
    real_load = reading.load_trained
    monkeypatch.setattr(reading, "load_trained", lambda run, which="best": (real_load(run, which)[0], _Oracle(truth)))
    out = tmp_path / "bank.npz"
    code, stdout, err = run_cli(capsys, "data", "harvest", "toy", "--out", out, "--runs-dir", toy_run, "--share", "0.9")
    assert code == 0, err
    four = [i for i, im in enumerate(truth.images) if len(ink_segments(im)) == 4]
    z = np.load(out)
    mask = z["harvested"]
    assert mask.sum() == 4 * len(four) and str(z["harvested_by"]).endswith("toy")  # every image split in four
    assert f"{4 * len(four)} harvested (of {4 * len(four)} from {len(four)} of {len(four)}" in stdout
    np.testing.assert_array_equal(z["y_train"][mask], truth.digits[four].ravel())  # in order, each its own digit
    cells = z["x_train"][mask]
    assert cells.shape[1:] == (CELL, CELL) and (cells.max(axis=(1, 2)) > 100).all()
    assert (tmp_path / "bank.png").is_file()


@pytest.mark.parametrize("args, msg", [
    (["--share", "1.0"], "--share"),
    (["--min-posterior", "0"], "--min-posterior"),
    (["--out-suffix"], "must end in .npz"),
])
def test_data_harvest_user_errors_write_nothing(capsys, tmp_path, toy_run, args, msg):
    out = tmp_path / ("bank.txt" if args == ["--out-suffix"] else "bank.npz")
    extra = [] if args == ["--out-suffix"] else args
    code, _, err = run_cli(capsys, "data", "harvest", "toy", "--out", out, "--runs-dir", toy_run, *extra)
    assert_user_error(code, err, msg)
    assert list(tmp_path.iterdir()) == []


def test_data_harvest_refuses_a_sum_head_run(capsys, tmp_path, tiny_data, toy_run):
    from mlns_fast.cli import main
    assert main(["train", "--quiet", "--name", "sum-toy", "--runs-dir", str(toy_run), "--head", "sum",
                 *flag_args(tiny_flags(tiny_data, epochs=1))]) == 0
    code, _, err = run_cli(capsys, "data", "harvest", "sum-toy", "--out", tmp_path / "b.npz", "--runs-dir", toy_run)
    assert_user_error(code, err, "digits head")
    assert list(tmp_path.iterdir()) == []


def test_merged_bank_keeps_the_bank_first_and_caps_the_harvest():
    from mlns_fast.data.harvest import Harvest, merged_bank
    from mlns_fast.data.mnist import Bank
    bank = Bank(np.zeros((30, CELL, CELL), np.uint8), np.arange(30) % 10, np.arange(30), "toy")
    cells = np.stack([np.full((CELL, CELL), k, np.uint8) for k in range(1, 101)])
    found = Harvest(cells, np.arange(100) % 10, 25, 25, 25)
    images, labels, mask = merged_bank(bank, found, share=0.4)
    assert len(images) == 30 + 20 and mask.tolist() == [False] * 30 + [True] * 20  # 0.4 / 0.6 x 30
    picked = images[30:, 0, 0].astype(int) - 1  # which harvested glyphs, each once, labels carried along
    assert len(set(picked)) == 20 and (labels[30:] == found.labels[picked]).all()
    assert len(merged_bank(bank, found, share=0.9)[0]) == 130  # fewer found than the cap: all of them
