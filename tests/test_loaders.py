import os
import signal

import cv2
import numpy as np
import pytest
import torch

from mlns_fast.data.loaders import SYNTH, PlanDL, build_dataloaders, resolve_workers

from .conftest import assert_user_error, run_cli


def _batches(dl, n=2):
    out = []
    for i, b in enumerate(dl):
        out.append(b)
        if i + 1 == n:
            break
    return out


@pytest.mark.parametrize("mode, known_frac", [("real", 0.0), ("synthetic", 1.0), ("mixed", 0.5)])
def test_modes_shapes_dtypes_masks(tiny_cfg, mode, known_frac):
    dls = build_dataloaders(tiny_cfg(data=mode))
    assert dls.n_inp == 1
    for x, s, d, k in _batches(dls.train):
        assert x.shape == (16, 1, 40, 168) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert s.shape == (16,) and s.dtype == torch.int64 and s.min() >= 0 and s.max() <= 36
        assert d.shape == (16, 4) and d.dtype == torch.int64 and k.dtype == torch.bool
        assert k.float().mean().item() == known_frac  # exact per batch, not on average
        assert (d[k].sum(1) == s[k]).all()
    x, s, d, k = next(iter(dls.valid))
    assert not k.any() and x.shape[1:] == (1, 40, 168)


def test_epoch_length_and_plan(tiny_cfg):
    dls = build_dataloaders(tiny_cfg(data="mixed"))
    assert len(dls.train) == 12  # 96 real images, 8 per batch
    plan = dls.train._plan()
    assert sum(k[0] == SYNTH for k in plan) == 96 and len({k for k in plan}) == len(plan)
    syn = build_dataloaders(tiny_cfg(data="synthetic"))
    assert len(syn.train) == 3  # 48 synthetic images per epoch / 16


def test_plan_is_a_function_of_seed_and_epoch(tiny_cfg):
    a, b = build_dataloaders(tiny_cfg()).train, build_dataloaders(tiny_cfg()).train
    assert a._plan() == b._plan()
    a.epoch = 1
    assert a._plan() != b._plan()
    c = build_dataloaders(tiny_cfg(seed=5)).train
    assert c._plan() != b._plan()


def test_batches_identical_across_instances_and_workers(tiny_cfg):
    x0 = _batches(build_dataloaders(tiny_cfg(workers=0, augment=True)).train, 3)
    x1 = _batches(build_dataloaders(tiny_cfg(workers=1, augment=True)).train, 3)
    for b0, b1 in zip(x0, x1):
        for t0, t1 in zip(b0, b1):
            assert torch.equal(t0, t1)


def test_auto_workers_follow_the_device(tiny_cfg, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)   # a CPU trainer: a worker per thread it computes with
    assert resolve_workers(-1, None) == 2 and resolve_workers(-1, "cpu") == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 32)
    assert resolve_workers(-1, "cpu") == 8
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert resolve_workers(-1, "cpu") == 1
    assert resolve_workers(-1, torch.device("cuda", 0)) == 8          # 15 spare cores, capped at 8
    assert resolve_workers(-1, "cuda", world=4) == 3                  # 16 cores shared by 4 processes
    assert resolve_workers(0, "cuda") == 0 and resolve_workers(5, "cpu") == 5   # explicit values pass through
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert resolve_workers(-1, "cuda") == 1
    assert tiny_cfg(workers=-1).data.workers == -1
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    # fastai keeps the count in `fake_l` (its `num_workers` attribute reads 1 in this process, always)
    assert build_dataloaders(tiny_cfg(workers=-1)).train.fake_l.num_workers == min(8, threads)


class _Probe:
    """A dataset whose items say how the process that made them is scheduled (after an OpenCV op there)."""

    def __len__(self):
        return 4

    def __getitem__(self, key):
        cv2.GaussianBlur(np.ones((2000, 2000), np.float32), (15, 15), 3)  # a size OpenCV splits over its threads
        return (torch.tensor([os.sched_getscheduler(0)], dtype=torch.uint8),)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduler classes")
def test_workers_beside_a_cpu_trainer_render_at_idle_priority():
    cv2.GaussianBlur(np.ones((2000, 2000), np.float32), (15, 15), 3)  # OpenCV's pool started before the fork
    # (a worker that hangs fails the test after 60 s: `cv2.setNumThreads` in a worker did, forked after this)
    x, = next(iter(PlanDL(_Probe(), bs=2, num_workers=2, device="cpu", timeout=60)))
    assert (x[:, 0] * 255).round().long().tolist() == [os.SCHED_IDLE] * 2
    x, = next(iter(PlanDL(_Probe(), bs=2, num_workers=0, device="cpu")))   # no worker: this process untouched
    assert (x[:, 0] * 255).round().long().tolist() == [os.sched_getscheduler(0)] * 2
    assert os.sched_getscheduler(0) != os.SCHED_IDLE
    assert PlanDL(_Probe(), bs=2, device="cpu").background and PlanDL(_Probe(), bs=2).background
    assert not PlanDL(_Probe(), bs=2, device="cuda").background   # beside a GPU workers keep their priority


def test_worker_survives_a_stop_signal_sent_while_it_starts(tiny_cfg, monkeypatch):
    """A signal to the process group can reach a worker before its `wif` ignores it (seen in CI):
    here every worker signals itself first thing, and must still deliver its batches."""
    wif = PlanDL.wif

    def signalled_wif(self):
        os.kill(os.getpid(), signal.SIGTERM)
        wif(self)

    monkeypatch.setattr(PlanDL, "wif", signalled_wif)
    dl = build_dataloaders(tiny_cfg(workers=1)).train
    batches = _batches(dl, 2)
    assert len(batches) == 2 and batches[0][0].shape[0] == dl.bs
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # this process: unblocked again


def test_augmentation_changes_real_images_only_in_training(tiny_cfg):
    plain = _batches(build_dataloaders(tiny_cfg(data="real", augment=False)).train, 1)[0][0]
    aug = _batches(build_dataloaders(tiny_cfg(data="real", augment=True)).train, 1)[0][0]
    assert plain.shape == aug.shape and not torch.equal(plain, aug)
    v1 = next(iter(build_dataloaders(tiny_cfg(data="real", augment=True)).valid))[0]
    v0 = next(iter(build_dataloaders(tiny_cfg(data="real", augment=False)).valid))[0]
    assert torch.equal(v0, v1)


def test_sharding_splits_real_items(tiny_cfg):
    cfg = tiny_cfg(data="real")
    p0 = build_dataloaders(cfg, rank=0, world=2).train._plan()
    p1 = build_dataloaders(cfg, rank=1, world=2).train._plan()
    assert not {k[2] for k in p0} & {k[2] for k in p1}
    assert len(p0) + len(p1) == 96


def test_valid_split_from_real_when_no_valid_given(tiny_data):
    from mlns_fast.config import resolve_config
    cfg = resolve_config(real=(tiny_data["train"],), valid_pct=0.25, bs=8, workers=0, data="real")
    dls = build_dataloaders(cfg)
    assert len(dls.valid.dataset) == 24 and len(dls.train.dataset) == 72
    tr = dls.train.dataset.real.images.reshape(72, -1)
    va = dls.valid.dataset.real.images.reshape(24, -1)
    assert not (tr[:, None] == va[None]).all(-1).any()


def test_batches_hold_the_rendered_pixels_scaled_to_0_1(tiny_cfg):
    """Items travel as uint8 and are scaled after collation: the batch equals the renderer's image / 255."""
    dl = build_dataloaders(tiny_cfg(data="synthetic", workers=1)).train
    x, s, d, _ = _batches(dl, 1)[0]
    keys = dl._plan()[:dl.bs]
    want = np.stack([dl.dataset.renderer(e, j).image for _, e, j in keys]).astype(np.float32) / 255.0
    assert x.dtype == torch.float32 and np.array_equal(x[:, 0].numpy(), want)
    assert torch.equal(s, torch.tensor([dl.dataset.renderer(e, j).sum for _, e, j in keys]))


def test_real_styles_thicken_thin_or_resample_the_strokes():
    import albumentations as A

    from mlns_fast.data.loaders import real_styles
    img = np.zeros((40, 168), np.uint8)
    for x in (20, 60, 100, 140):
        img[8:32, x:x + 4] = 255  # four 4-pixel strokes
    assert real_styles(0.0) == []
    style = A.Compose(real_styles(1.0), seed=0)
    kinds = set()
    for i in range(40):
        style.set_random_seed(i)
        out = style(image=img)["image"]
        assert out.shape == img.shape and out.dtype == np.uint8
        ink, grey = int((out > 127).sum()), bool(((out > 0) & (out < 255)).any())
        if grey:
            kinds.add("resampled")  # drawn down and back up: soft edges
        elif ink > (img > 127).sum():
            kinds.add("thicker")
            assert ink == 4 * ((24 + 2) * (4 + 2) - 4)  # a pixel on every side (a cross: corners stay dark)
        else:
            kinds.add("thinner")
            assert 0 < ink < (img > 127).sum()
    assert kinds == {"resampled", "thicker", "thinner"}
    never = A.Compose(real_styles(1e-9), seed=0)
    assert all(np.array_equal(never(image=img)["image"], img) for _ in range(5))


def test_real_style_changes_real_training_images_only(tiny_cfg):
    plain = _batches(build_dataloaders(tiny_cfg(data="real", augment=True)).train, 2)
    styled = _batches(build_dataloaders(tiny_cfg(data="real", augment=True, real_style=1.0)).train, 2)
    again = _batches(build_dataloaders(tiny_cfg(data="real", augment=True, real_style=1.0, workers=1)).train, 2)
    for p, s, a in zip(plain, styled, again):
        assert not torch.equal(p[0], s[0]) and torch.equal(s[0], a[0])  # a different image, drawn the same way
        assert torch.equal(p[1], s[1]) and torch.equal(p[2], s[2])       # labels untouched
    v0 = next(iter(build_dataloaders(tiny_cfg(data="real", augment=True)).valid))[0]
    v1 = next(iter(build_dataloaders(tiny_cfg(data="real", augment=True, real_style=1.0)).valid))[0]
    assert torch.equal(v0, v1)


def test_real_style_without_augmented_real_images_is_refused(capsys, tmp_path):
    for flags in (["--data", "synthetic"], ["--no-augment"]):
        code, _, err = run_cli(capsys, "train", *flags, "--real-style", "0.5", "--runs-dir", tmp_path)
        assert_user_error(code, err, "--real-style styles augmented real training images")
    code, _, err = run_cli(capsys, "train", "--real-style", "1.5", "--runs-dir", tmp_path)
    assert_user_error(code, err, "--real-style must be in [0.0, 1.0]")
    assert not any(tmp_path.iterdir())  # nothing half-written
