import itertools

import torch

from mlns_fast.losses import (digit_accuracy, digit_loss, make_loss, mean_log_probs, sum_accuracy, sum_log_probs,
                              sum_log_probs_from_digits, sum_loss)
from mlns_fast.reading import readout

ALL = torch.tensor(list(itertools.product(range(10), repeat=4)))  # (10^4, 4) every digit tuple


def brute_force(logits: torch.Tensor) -> torch.Tensor:
    """P(sum) by enumerating all 10^4 tuples: (B, 37)."""
    p = torch.softmax(logits.double(), -1)  # (B, 4, 10)
    joint = p[:, 0, ALL[:, 0]] * p[:, 1, ALL[:, 1]] * p[:, 2, ALL[:, 2]] * p[:, 3, ALL[:, 3]]  # (B, 10^4)
    out = torch.zeros(len(logits), 37, dtype=torch.float64)
    return out.index_add_(1, ALL.sum(1), joint)


def test_sum_distribution_equals_brute_force():
    logits = torch.randn(6, 4, 10) * 3
    got = sum_log_probs_from_digits(logits).exp().double()
    assert got.shape == (6, 37)
    torch.testing.assert_close(got, brute_force(logits), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)


def test_prediction_matches_brute_force_argmax():
    logits = torch.randn(64, 4, 10) * 2
    pred = readout(sum_log_probs(logits).exp().numpy(), logits.numpy())  # the readout every prediction path uses
    s, conf = torch.from_numpy(pred["sum"]), torch.from_numpy(pred["confidence"])
    bf = brute_force(logits)
    assert (s == bf.argmax(1)).all()
    torch.testing.assert_close(conf.double(), bf.max(1).values, atol=1e-5, rtol=1e-5)


def test_argmax_of_sum_is_not_sum_of_argmaxes():
    # two unsure positions, each 0 (0.4), 1 (0.3) or 2 (0.3); two sure zeros. Sum of argmaxes: 0,
    # but P(sum=0) = 0.16 < P(sum=2) = 0.33: the distribution's argmax is 2.
    p = torch.full((1, 4, 10), 1e-9)
    p[0, :2, :3] = torch.tensor([0.4, 0.3, 0.3])
    p[0, 2:, 0] = 1.0
    logits = p.log()
    assert logits.argmax(-1).sum().item() == 0
    pred = readout(sum_log_probs(logits).exp().numpy(), logits.numpy())  # the readout every prediction path uses
    s, conf = torch.from_numpy(pred["sum"]), torch.from_numpy(pred["confidence"])
    assert s.item() == 2 and abs(conf.item() - 0.33) < 1e-3


def test_gradients_finite_for_extreme_logits():
    logits = torch.tensor([[[1e4] + [-1e4] * 9] * 4, [[-1e4] * 9 + [1e4]] * 4], requires_grad=True)
    sums = torch.tensor([36, 0])  # impossible under the logits: huge but finite loss
    loss = digit_loss(logits, sums, torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_digit_loss_uses_each_term_where_it_applies():
    torch.manual_seed(0)
    logits = torch.randn(4, 4, 10)
    digits = torch.randint(0, 10, (4, 4))
    sums = digits.sum(1)
    known = torch.tensor([True, True, False, False])
    ce = torch.nn.functional.cross_entropy(logits[:2].flatten(0, 1), digits[:2].flatten(), reduction="none").view(2, 4)
    nll = -sum_log_probs_from_digits(logits[2:]).gather(1, sums[2:, None]).squeeze(1)
    expect = (ce.mean(1).sum() + 0.5 * nll.sum()) / 4
    got = digit_loss(logits, sums, digits, known, digit_weight=1.0, sum_weight=0.5)
    torch.testing.assert_close(got, expect)
    # the known items' digit labels matter, the unknown items' do not
    d2 = digits.clone()
    d2[2:] = 0
    torch.testing.assert_close(digit_loss(logits, sums, d2, known, 1.0, 0.5), got)


def test_sum_head_loss_and_metrics():
    out = torch.randn(8, 37)
    sums = out.argmax(1)
    assert sum_accuracy(out, sums).item() == 1.0
    assert torch.isclose(sum_loss(out, sums), torch.nn.functional.cross_entropy(out, sums))
    assert torch.isclose(sum_log_probs(out).exp().sum(1), torch.ones(8)).all()
    assert make_loss("sum") is sum_loss
    assert torch.isnan(digit_accuracy(out, sums, torch.zeros(8, 4), torch.ones(8)))


def test_digit_accuracy_only_over_known():
    logits = torch.zeros(2, 4, 10)
    logits[:, :, 3] = 5
    digits = torch.tensor([[3, 3, 3, 3], [0, 0, 0, 0]])
    assert digit_accuracy(logits, digits.sum(1), digits, torch.tensor([True, False])).item() == 1.0


def test_fit_temperature_recovers_the_scale_that_generated_the_labels():
    from mlns_fast.losses import fit_temperature
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 37, generator=g) * 3
    labels = torch.multinomial((z / 2.0).softmax(1), 1, generator=g).squeeze(1)
    assert abs(fit_temperature(z, labels) - 2.0) < 0.15
    digits = torch.randn(4000, 4, 10, generator=g) * 4  # the digits head: T scales every position
    from mlns_fast.losses import sum_log_probs
    labels = torch.multinomial(sum_log_probs(digits / 0.5).exp(), 1, generator=g).squeeze(1)
    assert abs(fit_temperature(digits, labels) - 0.5) < 0.08


def test_label_smoothing_of_the_sum_marginal_is_torchs_definition():
    from mlns_fast.losses import smoothed_nll
    logits, y = torch.randn(7, 37) * 3, torch.randint(0, 37, (7,))
    for eps in (0.0, 0.1, 0.5):
        want = torch.nn.functional.cross_entropy(logits, y, label_smoothing=eps, reduction="none")
        assert torch.allclose(smoothed_nll(torch.log_softmax(logits, -1), y, eps), want, atol=1e-6)


def _confident(digits: torch.Tensor, margin: float = 12.0) -> torch.Tensor:
    """(B, 4, 10) logits that read `digits` with near certainty."""
    return torch.nn.functional.one_hot(digits, 10).float() * margin


def test_label_smoothing_raises_the_loss_of_confident_correct_readings():
    digits = torch.tensor([[1, 2, 3, 4], [9, 0, 9, 0]])
    out, sums = _confident(digits), digits.sum(1)
    for known in (torch.tensor([True, True]), torch.tensor([False, False])):  # digit CE; sum-marginal NLL
        plain = digit_loss(out, sums, digits, known)
        smooth = digit_loss(out, sums, digits, known, label_smoothing=0.1)
        assert plain < 1e-3 and smooth > plain + 0.05, (known, plain, smooth)
    sum_out = torch.nn.functional.one_hot(sums, 37).float() * 12.0
    assert make_loss("sum", label_smoothing=0.1)(sum_out, sums) > sum_loss(sum_out, sums) + 0.05
    # ...and lowers it for a wrong but unsure one (the smoothed target is not all on the label)
    wrong = torch.zeros(2, 37)
    wrong[:, 0] = 1.0
    assert make_loss("sum", label_smoothing=0.5)(wrong, sums) < sum_loss(wrong, sums)
    assert make_loss("digits", label_smoothing=0.0)(out, sums, digits, known) == digit_loss(out, sums, digits, known)


def test_mean_log_probs_reads_several_readings_as_one():
    """The rule shift TTA and experiments/ensemble.py share: copies of one reading give that reading's
    log-probabilities (in float32 from bf16); a sure reading outvotes an unsure one that disagrees."""
    one = torch.randn(3, 4, 10)
    same = mean_log_probs([one.bfloat16(), one.bfloat16()])
    assert same.dtype == torch.float32 and same.shape == (3, 4, 10)
    assert torch.allclose(same, one.bfloat16().float().log_softmax(-1))
    sure, unsure = torch.full((1, 37), -9.0), torch.zeros(1, 37)
    sure[0, 5], unsure[0, 7] = 9.0, 0.5
    mean = mean_log_probs([sure, unsure])
    assert int(mean.argmax()) == 5 and int(unsure.argmax()) == 7
    assert float(mean.exp().sum()) < 1.0  # a mean of log-probabilities: read like logits, not a distribution
