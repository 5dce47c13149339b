"""Figures a person reads: what is drawn, not only that a file appeared."""
import numpy as np

from mlns_fast import plots


def _rows(epochs=2):
    return [{"epoch": e, "train_loss": 2.0 - e, "valid_loss": 2.5 - e, "acc": 0.3 + 0.2 * e, "acc_ema": 0.35 + 0.2 * e,
             "valid_loss_ema": 2.4 - e} for e in range(epochs)]


def _steps(n_per_epoch=5, epochs=2):
    return [{"step": e * n_per_epoch + k + 1, "epoch": e, "loss": 3.0 - 0.1 * k, "smooth_loss": 2.9 - 0.1 * k, "lr": 1e-3}
            for e in range(epochs) for k in range(n_per_epoch)]


def test_curves_draw_the_loss_per_step_on_an_epoch_axis(tmp_path):
    steps = _steps()
    fig, (acc, loss) = plots.curves_figure(_rows(), "t", steps)
    train = next(line for line in loss.get_lines() if "per step" in str(line.get_label()))
    x, y = train.get_data()
    assert len(x) == len(steps) == 10 and list(y) == [r["smooth_loss"] for r in steps]
    assert x[4] == 1.0 and x[-1] == 2.0  # step k of epoch e at e + k/n: epoch ends meet the valid points
    assert len(acc.get_lines()[0].get_xdata()) == 2  # accuracy stays per epoch
    assert plots.plot_curves(_rows(), tmp_path / "c.png", steps=steps).stat().st_size > 5000
    fig, (_, loss) = plots.curves_figure(_rows(), "old run")  # no steps.csv: the per-epoch train loss
    assert [str(line.get_label()) for line in loss.get_lines()][0] == "train"


def test_confusion_uses_a_log_scale_that_shows_single_mistakes():
    from matplotlib.colors import LogNorm
    true = np.array([5] * 500 + [7])
    pred = np.array([5] * 500 + [8])
    fig = plots.confusion_figure(true, pred)
    im = fig.axes[0].images[0]
    assert isinstance(im.norm, LogNorm) and im.norm.vmin == 1 and im.norm.vmax == 500
    data = im.get_array()
    assert data[7, 8] == 1 and data[5, 5] == 500 and np.ma.is_masked(data[0, 0])  # empty cells blank


def test_robustness_bars_carry_values_and_a_labelled_target():
    rows = [{"set": "tight", "group": "layout", "sum_accuracy": 0.473, "digit_accuracy": 0.8},
            {"set": "fonts", "group": "writer", "sum_accuracy": 0.912}]
    fig = plots.robustness_figure(rows)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert {"0.47", "0.91", "0.80"} <= set(texts) and "nan" not in texts
    assert "target 90%" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_mistake_titles_name_the_true_digits_when_known():
    from mlns_fast.data.sources import Samples
    from mlns_fast.evaluation import mistake_titles
    pred = {"sum": np.array([17]), "confidence": np.array([0.93]), "digits": np.array([[4, 7, 3, 3]])}
    known = Samples(np.zeros((1, 40, 168), np.uint8), np.array([18]), np.array([[4, 7, 4, 3]]))
    assert mistake_titles(pred, known, [0]) == ["pred 17 (93%) 4733 | true 18 4743"]
    known.digits = None
    assert mistake_titles(pred, known, [0]) == ["pred 17 (93%) 4733 | true 18"]
