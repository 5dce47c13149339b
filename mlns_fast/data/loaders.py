"""fastai DataLoaders over real and synthetic images, alone or mixed in every batch.

An item is `(image, sum, digits, digits_known)`: image (1, H, W) uint8, sum int64, digits (4,)
int64 (zeros where unknown) and a bool mask, so one batch can hold both kinds and the loss decides
per item which term applies. With `--box-weight`, training items also carry each digit's (x0, x1)
span in pixels (the renderer's boxes; -1 for real images), for `callbacks.BoxTarget`. Batches leave
the loader with the images as float32 in 0..1: the scaling happens after the transfer, on the
training device (`PlanDL.after_batch`), so workers collate, hand over and copy a quarter of the bytes.

Item keys are tuples `(source, epoch, j)` (source 0 = real, 1 = synthetic) chosen by
`PlanDL.get_idxs` from (seed, epoch) alone: shuffling, rendering and augmentation are pure
functions of the key, so workers, epochs and resumed runs reproduce bit for bit.
"""
from __future__ import annotations

import logging
import math
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.torch_core import to_device

from ..config import N_DIGITS, RenderConfig, RunConfig
from ..errors import DataError
from .demo import demo_split
from .pool import Pool, synthetic_pool
from .render import create_renderer
from .repack import repack
from .sources import Samples, load_sources

log = logging.getLogger(__name__)
REAL, SYNTH = 0, 1


def augmenter(seed: int, style: float = 0.0):
    """albumentations pipeline for real training images (mild affine, elastic, blur, noise), with
    `real_styles(style)` after the geometry."""
    import albumentations as A
    return A.Compose([
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.04, 0.04), rotate=(-6, 6), shear=(-8, 8), p=0.7),
        A.ElasticTransform(alpha=6, sigma=4, p=0.2),
        *real_styles(style),
        A.GaussianBlur(blur_limit=(3, 3), p=0.15),
        A.GaussNoise(std_range=(0.02, 0.06), p=0.15),
    ], seed=seed)


def real_styles(p: float) -> list:
    """With probability `p`, one of the renderer's glyph styles given to a whole real image: strokes a
    pixel thicker (3 x 3 elliptical dilation) or thinner (2 x 2 erosion), as `[render] stroke` does a glyph, or the
    image drawn down to 0.35-0.7 of its size and back up, as `[render] rescan` does (empty when p = 0)."""
    if p <= 0:
        return []
    import albumentations as A
    return [A.OneOf([A.Morphological(scale=(3, 3), operation="dilation", p=1.0),
                     A.Morphological(scale=(2, 2), operation="erosion", p=1.0),
                     A.Downscale(scale_range=(0.35, 0.7), p=1.0,
                                 interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR})],
                    p=p)]


class Items:
    """Indexable by `(source, epoch, j)`: real image j (augmented per epoch) or synthetic image (epoch, j)."""

    def __init__(self, real: Samples | None, renderer=None, augment: bool = False, seed: int = 0,
                 repack: float = 0.0, layout: RenderConfig | None = None,
                 repack_size: str = "small", repack_epochs: int | None = None, repack_synth: float = 0.0,
                 boxes: bool = False, style: float = 0.0):
        self.real, self.renderer, self.seed = real, renderer, seed
        self.pool: Pool | None = None  # build_dataloaders sets it once the plan says how many images the run draws
        self.boxes = boxes  # items also carry each digit's (x0, x1) in pixels: the renderer's, -1 where unknown
        # share of real images re-laid out crowded, in `layout`'s ranges, in epochs < repack_epochs (None: all);
        # `repack_synth`: the share of synthetic slots given to a crowded view of a random real image instead
        self.repack, self.layout, self.repack_size, self.repack_epochs = repack, layout, repack_size, repack_epochs
        self.repack_synth = repack_synth
        self.aug = augmenter(seed, style) if augment and real is not None else None
        self.n_real = 0 if real is None else len(real)
        self.pseudo: np.ndarray | None = None  # (n_real, 4) digit readings used as labels; -1 = none (self-training)

    def _crowds(self, epoch: int) -> bool:
        return self.repack_epochs is None or epoch < self.repack_epochs

    def __getitem__(self, key):
        src, epoch, j = key
        if src == SYNTH:
            if self.repack_synth > 0 and self._crowds(epoch):
                rng = np.random.default_rng([self.seed, epoch, j, 13])
                if rng.random() < self.repack_synth:  # this slot: a crowded view of a random real image
                    k = int(rng.integers(self.n_real))
                    img = repack(self.real.images[k], self.layout, rng, self.repack_size)
                    return self._real(img, k, (self.seed, epoch, k, j))
            if self.pool is not None:
                img, digits = self.pool.item(epoch, j)
                return self._item(img, digits.sum(), digits, True)
            r = self.renderer(epoch, j)
            return self._item(r.image, r.sum, r.digits, True, r.boxes)
        img = self.real.images[j]
        if self.repack > 0 and self._crowds(epoch):
            rng = np.random.default_rng([self.seed, epoch, j, 11])
            if rng.random() < self.repack:
                img = repack(img, self.layout, rng, self.repack_size)
        return self._real(img, j, (self.seed, epoch, j))

    def _real(self, img: np.ndarray, j: int, aug_key: tuple):
        """Real image j's item (`img`: its pixels or a crowded view of them), augmented by `aug_key`'s draw."""
        if self.aug is not None:
            self.aug.set_random_seed(hash(aug_key) & 0x7FFFFFFF)
            img = self.aug(image=img)["image"]
        if self.real.digits is not None:
            return self._item(img, self.real.sums[j], self.real.digits[j], True)
        if self.pseudo is not None and self.pseudo[j, 0] >= 0:
            return self._item(img, self.real.sums[j], self.pseudo[j], True)
        return self._item(img, self.real.sums[j], np.zeros(N_DIGITS, np.int64), False)

    def __len__(self) -> int:
        return self.n_real

    def _item(self, img: np.ndarray, s, digits: np.ndarray, known: bool, boxes: np.ndarray | None = None):
        """(image, sum, digits, known), plus the digits' (x0, x1) spans (4, 2) when the items carry boxes
        (`boxes`: the renderer's (4, 4) x0, y0, x1, y1; None where unknown)."""
        x = torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(0)  # (1, H, W) uint8
        item = (x, torch.tensor(int(s)), torch.as_tensor(digits, dtype=torch.int64), torch.tensor(known))
        if not self.boxes:  # the default: nothing more per item on the loader's path
            return item
        spans = np.full((N_DIGITS, 2), -1.0, np.float32) if boxes is None else boxes[:, [0, 2]].astype(np.float32)
        return (*item, torch.from_numpy(spans))


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_END = object()


class PlanDL(DataLoader):
    """fastai DataLoader whose item order is a pure function of (seed, epoch).

    `mix` is the synthetic fraction of *every* batch (not just on average): fastai's and
    PyTorch's samplers only shuffle one index space, so the per-batch composition is planned here.
    `rank` / `world` shard the real items and give each process its own synthetic stream.
    """

    def __init__(self, dataset: Items, n_synth: int = 0, mix: float = 0.0, seed: int = 0,
                 rank: int = 0, world: int = 1, **kwargs):
        self.n_synth, self.mix, self.plan_seed, self.rank, self.world = n_synth, mix, seed, rank, world
        self.epoch, self.target = 0, kwargs.pop("device", None)
        super().__init__(dataset, **kwargs)  # fastai's `device` stays None: `after_batch` does the copy
        self.n = len(self._plan())

    def _plan(self) -> list[tuple[int, int, int]]:
        e, n_real = self.epoch, len(self.dataset)
        rng = np.random.default_rng([self.plan_seed, e, 7])
        real = rng.permutation(n_real) if self.shuffle else np.arange(n_real)
        real = [(REAL, e, int(j)) for j in real[self.rank::self.world]]
        synth = lambda k: [(SYNTH, e, j * self.world + self.rank) for j in range(k)]  # noqa: E731
        if self.mix <= 0:
            return real + synth(self.n_synth)
        if not real:
            return synth(self.n_synth)
        k_syn = min(max(int(round(self.mix * self.bs)), 1), self.bs - 1)
        k_real = self.bs - k_syn
        n_batches = math.ceil(len(real) / k_real)
        syn = synth(n_batches * k_syn)
        return [key for b in range(n_batches)
                for key in real[b * k_real:(b + 1) * k_real] + syn[b * k_syn:(b + 1) * k_syn]]

    def get_idxs(self):
        return self._plan()

    def wif(self):
        """In each worker process: leave SIGINT / SIGTERM to the main process. A signal to the whole
        process group (`timeout`, Slurm, systemd, Ctrl-C) would otherwise kill the worker first, and
        the main process would fail on the dead worker instead of stopping cleanly after the batch;
        the main process ends its workers itself when the fit stops. The signals arrive blocked
        (`__iter__`), so one sent while the worker starts is dropped here instead of killing it."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        if self.background and hasattr(os, "SCHED_IDLE"):
            # Beside a CPU trainer, whose threads fill every core and wait for each other at every op, a
            # worker that takes a core mid-op stalls both (a forward took 1.7x as long): at idle priority
            # it renders only while the trainer waits for a batch (benchmarks/README.md). The threads
            # OpenCV starts in this process later inherit it. (Not `cv2.setNumThreads(1)` here: in a
            # process forked after its parent started OpenCV's pool it waits forever on the pool.)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    @property
    def background(self) -> bool:
        """Whether the workers render beside a CPU trainer (`cpu_trainer`): then at idle priority (`wif`)."""
        return cpu_trainer(self.target)

    def __iter__(self):
        """fastai's iteration, with SIGINT / SIGTERM blocked while the workers start (until the first
        batch): a worker inherits the mask, so a signal to the process group in that window stays
        pending until `wif` ignores it; in this process it is delivered as soon as the mask is
        restored (caught in CI: a worker killed between its start and `wif`)."""
        if self.fake_l.num_workers == 0 or not hasattr(signal, "pthread_sigmask"):
            yield from super().__iter__()
            return
        it = super().__iter__()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            first = next(it, _END)  # the workers start here
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if first is not _END:
            yield first
            yield from it

    def to(self, device):
        """Where batches go (fastai's `DataLoaders` sets it through this)."""
        self.target = device

    def after_batch(self, b):
        """The batch to `target`, then uint8 images -> float32 in 0..1 there (bit-identical to scaling
        each item on the CPU: one IEEE division either way). The copy is non-blocking (from pinned
        memory beside a GPU): fastai's own is blocking, which would make the host wait every batch
        until the GPU has run everything queued before it."""
        if self.target is not None:
            b = to_device(b, self.target, non_blocking=True)
        x, *rest = b
        return (x.float().div_(255.0), *rest)

    def new(self, dataset=None, cls=None, **kwargs):
        kw = dict(n_synth=self.n_synth, mix=self.mix, seed=self.plan_seed, rank=self.rank, world=self.world,
                  device=self.target)
        return super().new(dataset, cls, **{**kw, **kwargs})


def resolve_real(cfg: RunConfig, need_train: bool = True) -> tuple[Samples | None, Samples]:
    """Real training and validation Samples: the user's files, or the demo stand-in."""
    d, size = cfg.data, cfg.size
    if not d.real:
        train = demo_split("train", size) if need_train else None
        valid = load_sources(d.valid, size) if d.valid else demo_split("valid", size)
        return train, valid
    both = sorted(set(map(_canonical, d.real)) & set(map(_canonical, d.valid)))
    if both:
        raise DataError(f"{both[0]}: given as both --real and --valid; validation must be held out")
    everything = load_sources(d.real, size)
    if d.valid:
        return everything, load_sources(d.valid, size)
    order = np.random.default_rng(1234).permutation(len(everything))
    n_valid = max(1, int(round(d.valid_pct * len(everything))))
    if n_valid >= len(everything):
        raise DataError(f"{everything.source}: {len(everything)} images are too few to hold out a validation set")
    log.info("holding out %d of %d real images for validation", n_valid, len(everything))
    return everything.subset(np.sort(order[n_valid:])), everything.subset(np.sort(order[:n_valid]))


def _canonical(spec: str) -> str:
    """A source spec with each of its paths resolved, so `a.npz` and `./a.npz` compare equal."""
    return ":".join(str(Path(part).resolve()) for part in spec.split(":"))


def cpu_trainer(device) -> bool:
    """Whether a model on `device` computes on this machine's cores (None: the default device, the CPU)."""
    return device is None or torch.device(device).type == "cpu"


def resolve_workers(workers: int, device=None, world: int = 1) -> int:
    """`--workers -1` (the default): beside a CPU trainer, a worker per thread the trainer computes
    with, up to 8: they render at idle priority (`PlanDL.wif`), that is while the trainer waits for a
    batch, and then on every core at once (2 cores: a batch of the default recipe 0.78-0.88x as long
    as with the one normal-priority worker before: benchmarks/README.md); beside an accelerator, a
    worker per spare core up to 8 -- on an H200 the CNN trained at ~1,500 img/s with one worker and
    ~5,200 with eight (experiments/RESULTS.md, "On one GPU")."""
    if workers >= 0:
        return workers
    if cpu_trainer(device):
        return max(1, min(8, torch.get_num_threads()))
    return max(1, min(8, (os.cpu_count() or 2) // world - 1))


def build_dataloaders(cfg: RunConfig, device=None, rank: int = 0, world: int = 1,
                      progress: bool = False) -> DataLoaders:
    """Train DataLoader (real / synthetic / mixed per `cfg.data.data`) and a real validation one."""
    d, seed = cfg.data, cfg.train.seed
    train_real, valid = resolve_real(cfg, need_train=d.data != "synthetic")
    # the synthetic stream: the run's layout, the training bank only (never reserved digits), the run's seed
    renderer = create_renderer(cfg.render, seed, d.bank) if d.data != "real" else None
    # crowded views in the real images' own slots, or as many (repack x the real images) in synthetic ones
    in_synth = bool(d.repack) and d.repack_slots == "synthetic"
    items = Items(train_real if d.data != "synthetic" else None, renderer, d.augment, seed,
                  repack=0.0 if in_synth else d.repack, layout=cfg.render, repack_size=d.repack_size,
                  repack_epochs=round(d.repack_until * cfg.train.epochs),
                  repack_synth=d.repack * (1 - d.mix) / d.mix if in_synth else 0.0,
                  boxes=cfg.model.box_weight > 0, style=d.real_style)
    n_synth = d.synthetic_per_epoch // world if d.data == "synthetic" else 0
    mix = d.mix if d.data == "mixed" else 0.0
    # pinned host memory makes the copy to a GPU a DMA transfer; not persistent workers: each epoch's
    # workers must see that epoch's plan and self-training labels, set in this process before it starts
    cuda = device is not None and torch.device(device).type == "cuda"
    common = dict(bs=d.bs, num_workers=resolve_workers(d.workers, device, world), device=device, pin_memory=cuda)
    train = PlanDL(items, n_synth=n_synth, mix=mix, seed=seed, rank=rank, world=world,
                   shuffle=True, drop_last=True, **common)
    if len(train) == 0:
        raise DataError(f"{len(items)} training images make no full batch of {d.bs}; lower --bs")
    if renderer is not None and d.synth_pool:
        # what the run draws, every rank's together: a -1 pool is that large, so each image is seen once
        per_epoch = world * sum(key[0] == SYNTH for key in train._plan())
        drawn = cfg.train.epochs * per_epoch
        items.pool = synthetic_pool(renderer, drawn if d.synth_pool < 0 else d.synth_pool, progress)
        items.pool.per_epoch = per_epoch
        if drawn > len(items.pool):
            log.warning("the synthetic pool holds %d images and this run draws %d: each is seen ~%.1f times "
                        "(measured on the default recipe: a pool of 60,000 lost 8 points on the fonts set and 4 "
                        "on tight; --synth-pool -1 makes the pool as large as the run draws)",
                        len(items.pool), drawn, drawn / len(items.pool))
    # validation is not sharded: every rank scores the whole set, so metrics need no gathering
    valid_dl = PlanDL(Items(valid), seed=seed, shuffle=False, **common)
    dls = DataLoaders(train, valid_dl, device=device)
    dls.n_inp = 1  # (image,) is the input; (sum, digits, known) are targets for the loss (training batches
    # also carry the digits' spans with --box-weight: callbacks.BoxTarget takes them out before the loss sees them)
    return dls

