"""Models: a backbone (any timm architecture, or a built-in small CNN) plus a `sum` or `digits` head.

The network returns one tensor whose meaning the head name gives: `sum` -> (B, 37) logits,
`digits` -> (B, 4, 10) logits, left to right. (One tensor rather than a dict keeps fastai's
mixed precision, `get_preds` and ONNX export working unchanged; `losses.sum_log_probs` turns
either into the (B, 37) sum distribution that metrics and predictions use.)
"""
from __future__ import annotations

import difflib
import logging
import pickle
import zipfile
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import INK_MAPS, N_CLASSES, N_DIGITS, N_SUMS, ModelConfig
from .errors import ModelError

log = logging.getLogger(__name__)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _lowers(layer: nn.Module) -> bool:
    """Whether `layer` lowers the resolution (a strided convolution or a pooling)."""
    strides = [m.stride for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    return any(max(s if isinstance(s, tuple) else (s,)) > 1 for s in strides)


class SmallCNN(nn.Module):
    """A plain conv stack with `forward_features` / `num_features` like a timm model."""

    def __init__(self, layers: list[nn.Module], num_features: int):
        super().__init__()
        self.features, self.num_features = nn.Sequential(*layers), num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def group_matcher(self, coarse: bool = False):
        """timm's parameter-grouping protocol (read by `timm.models.group_parameters`, as for a timm model):
        coarse, one group per resolution (each layer that lowers it opens the next); fine, one per layer."""
        group, of = 0, []
        for i, layer in enumerate(self.features):
            group += bool(i) and _lowers(layer)
            of.append(group if coarse else i)
        return lambda name: of[int(name.split(".")[1])]  # parameter names: features.<layer>.<...>

    def forward_pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the last map at a finer stride than the output, the output): a two-level pyramid."""
        fine = None
        for layer in self.features:
            y = layer(x)
            if y.shape[-1] < x.shape[-1]:  # this layer lowers the resolution: its input is the finer level
                fine = x
            x = y
        return fine, x


def convnet4() -> SmallCNN:
    """The seed's "4 layer Conv network": four conv-BN-ReLU-maxpool blocks, 32..256 channels."""
    chans = [1, 32, 64, 128, 256]
    layers = [m for a, b in zip(chans, chans[1:]) for m in (_conv(a, b), nn.MaxPool2d(2))]
    return SmallCNN(layers, chans[-1])


def mlns_cnn(width: float = 1.0, stem: int = 0) -> SmallCNN:
    """Six 3x3 convs, stride 2 every other one (40x168 -> 5x21): cheap on CPU, MNIST-grade per digit.
    `width` multiplies every layer's channels (32, 64, 128 at 1); `stem`, when given, sets the first two
    convs' channels alone (on a CPU their 20 x 84 maps' batch norm and ReLU, bound by memory, are the
    largest share of a step: benchmarks/README.md)."""
    c1, c2, c3 = (int(round(c * width)) for c in (32, 64, 128))
    c1 = stem or c1
    plan = [(1, c1, 2), (c1, c1, 1), (c1, c2, 2), (c2, c2, 1), (c2, c3, 2), (c3, c3, 1)]
    return SmallCNN([_conv(a, b, s) for a, b, s in plan], c3)


BUILTIN = {"convnet4": convnet4, "mlns_cnn": mlns_cnn, "mlns_cnn_wide": partial(mlns_cnn, 1.5),
           "mlns_cnn_lean": partial(mlns_cnn, stem=16)}


AUTO_STRIDE = 16  # --output-stride 0: where a family supports it (measured: experiments/RESULTS.md, timm backbones)


def check_arch(arch: str) -> None:
    """A built-in or timm architecture name, else ModelError with the closest names."""
    import timm
    if arch not in BUILTIN and not timm.is_model(arch):
        close = difflib.get_close_matches(arch, list(BUILTIN) + timm.list_models(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `timm.list_models()`"
        raise ModelError(f"unknown architecture {arch!r}{hint}")


def create_backbone(arch: str, pretrained: bool = False, pretrained_file: str | Path | None = None,
                    size: tuple[int, int] | None = None, output_stride: int = 0) -> nn.Module:
    """A feature extractor by name: built-in, or `timm.create_model(arch, in_chans=1, num_classes=0)`.

    `pretrained`: timm's own weights for `arch` (`resnet50.a1_in1k` picks a tag), through timm's
    download and Hugging Face cache (`HF_HUB_OFFLINE=1` uses the cache only); timm adapts the RGB
    stem to one channel. `pretrained_file` points timm at a local file instead (its
    `pretrained_cfg_overlay`), which is how the download path is tested offline.

    The feature map the head reads: a stride-32 backbone hands it 2 x 6 cells for four digits, so
    families that take timm's `output_stride` (ResNets, ConvNeXt, EfficientNet, RegNet...) run at
    `output_stride` (0 = AUTO_STRIDE: 3 x 11 cells) through dilation; token models (ViT, hybrids)
    are built for this image size (`dynamic_img_size`, padded to whole patches)."""
    if arch in BUILTIN:
        if pretrained or output_stride:
            raise ModelError(f"{arch} is built in: it has no pretrained weights and its own stride (mlns_cnn and "
                             "mlns_cnn_wide / mlns_cnn_lean 8, convnet4 16); use a timm --arch, or --init RUN")
        return BUILTIN[arch]()
    check_arch(arch)
    overlay = {"pretrained_cfg_overlay": {"file": str(pretrained_file)}} if pretrained_file else {}
    try:
        return _create_fitted(arch, pretrained, size, output_stride, in_chans=1, num_classes=0, global_pool="",
                              **overlay)
    except RuntimeError as e:  # timm: an invalid pretrained tag, or weights that do not fit
        raise ModelError(f"{arch}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # huggingface_hub: offline, not cached, or the download failed
        raise ModelError(f"{arch}: timm's pretrained weights could not be fetched ({type(e).__name__}: offline or not "
                         "in the Hugging Face cache); without a network use --backbone-weights FILE (a local .safetensors / "
                         ".pth)") from None


def _create_fitted(arch: str, pretrained: bool, size: tuple[int, int] | None, output_stride: int, **kw) -> nn.Module:
    """`arch` fitted to 40 x 168 images: at the output stride where the family takes one, else (token
    models: ViT, hybrids) built for this image size. timm has no registry of which family takes what, so
    the stride is tried first: a CNN that takes it is built once."""
    import timm
    stride = output_stride or AUTO_STRIDE
    if stride != 32:
        try:
            return timm.create_model(arch, pretrained=pretrained, output_stride=stride, **kw)
        except (TypeError, AssertionError, ValueError) as e:
            if isinstance(e, OSError):  # huggingface_hub's "not found" errors are ValueErrors too
                raise
    refused = output_stride not in (0, 32)  # an explicit stride this family does not take
    model = timm.create_model(arch, pretrained=pretrained and not refused, **kw)
    if hasattr(model, "patch_embed"):
        if size is None:
            raise ModelError(f"{arch}: a token model is built for one image size; give it")
        if output_stride:
            raise ModelError(f"{arch}: a token model has no --output-stride (its patch size sets the grid)")
        return timm.create_model(arch, pretrained=pretrained, img_size=tuple(size), dynamic_img_size=True,
                                 dynamic_img_pad=True, **kw)
    if refused:
        raise ModelError(f"{arch}: this family does not take --output-stride {output_stride} (use 0 for its own)")
    return model


class InkFit(nn.Module):
    """Enlarges each image so that its ink fills the canvas, as OCR normalises a text line's size
    before reading it: small or crowded digits reach the reader at the scale of large ones, with the
    columns of the feature map to tell them apart.

    The ink's box is found on the 3x3-averaged image (isolated noise pixels fall below the threshold)
    at `rel` of its brightest value (a one-pixel stroke averages to a third of its value: at the default
    0.3, 6.6 % of the training renderer's images lose the thin end of an outer digit, 0.3 % at 0.15;
    trained at 0.15 the reader gains on thin strokes and loses on other writers: RESULTS.md, issue 20's
    twenty-seventh round), or, with `kind` lines, on the largest of four 3-pixel line averages, where a
    thin stroke keeps its value and noise is dimmed as before. Training may find it on another map
    (`train_kind`): the default trains on the 3x3 average, whose cut thin ends the reader learns from
    (trained on lines, it reads other writers 1.1 points worse), and reads on lines (thin strokes +2.5,
    other writers the same: RESULTS.md, issue 20's thirtieth round); the box plus a margin is scaled to fill the canvas by up to
    `zoom` (never shrunk), the width by at most `STRETCH` times the height's factor (and the other
    way round), centred. With `jitter`, training draws each image's threshold from [rel, rel + jitter]
    (reading keeps `rel`): the network sees both the whole ink and outer digits' thin ends cut off (at
    0.15 + 0.3 it gains 0.15's thin strokes and keeps most of 0.15's loss on other writers: the
    twenty-eighth round). A blank image passes through unchanged. Hand-written because neither torch
    nor timm normalises by content; plain tensor ops and grid_sample keep it in ONNX (opset 16+)."""

    REL, MARGIN, STRETCH = 0.3, 2.0, 2.0
    MAPS = INK_MAPS  # `kind`: which map of the image the threshold reads (`ink_map`)

    def __init__(self, zoom: float, size: tuple[int, int], rel: float = REL, jitter: float = 0.0, kind: str = "box",
                 train_kind: str | None = None):
        super().__init__()
        if kind not in self.MAPS or train_kind not in (None, *self.MAPS):
            raise ValueError(f"the ink map is one of {self.MAPS}; got {kind!r} (training: {train_kind!r})")
        self.zoom, self.rel, self.jitter, self.kind = float(zoom), float(rel), float(jitter), kind
        self.train_kind = train_kind or kind
        H, W = size
        self.register_buffer("gy", self.centres(H), persistent=False)
        self.register_buffer("gx", self.centres(W), persistent=False)

    @staticmethod
    def centres(n: int, device=None) -> torch.Tensor:
        """The centres of n pixels in grid_sample's normalised coordinates (align_corners=False)."""
        return (torch.arange(n, device=device) + 0.5) * 2 / n - 1

    @staticmethod
    def _extent(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First and one-past-last index of a (B, n) 0/1 mask; the whole range where it is empty."""
        n = mask.shape[1]
        i = torch.arange(n, device=mask.device, dtype=mask.dtype)
        lo = n - (mask * (n - i)).amax(1)  # float maxima only: ONNX has no reduction over booleans
        hi = (mask * (i + 1)).amax(1)
        empty = hi <= lo
        return torch.where(empty, torch.zeros_like(lo), lo), torch.where(empty, torch.full_like(hi, n), hi)

    @staticmethod
    def box_map(x: torch.Tensor) -> torch.Tensor:
        """Where the ink is, before the threshold: the 3x3-averaged image (a one-pixel stroke keeps a third
        of its value). torch's op, not slices as `line_map`: slices are faster but round differently, and a
        threshold that flips on one pixel in training gives another run of the same seed (benchmarks/README.md)."""
        return F.avg_pool2d(x, 3, 1, 1)

    @staticmethod
    def line_map(x: torch.Tensor) -> torch.Tensor:
        """Where the ink is, before the threshold: the largest of four 3-pixel line averages through each
        pixel (|, -, \\, /). A one-pixel stroke along any of them keeps its whole value, an isolated pixel
        a third of its own, a soft edge about what the 3x3 average gives it. Sums of shifted slices of the
        padded image, not a conv2d with the four kernels: on one channel the conv takes a slow CPU path (a
        batch of 128 on a 2-core host: ~19 ms against ~3; eager reading 1.07-1.09x; the same values to float
        rounding: benchmarks/ink_maps.py). Pads, slices, adds and a max export to ONNX as they are."""
        H, W = x.shape[-2:]
        p = F.pad(x, (1, 1, 1, 1))

        def at(dy: int, dx: int) -> torch.Tensor:  # the image shifted by (dy, dx), zeros outside
            return p[..., 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]

        c = at(0, 0)
        lines = [at(-1, 0) + c + at(1, 0), at(0, -1) + c + at(0, 1), at(-1, -1) + c + at(1, 1), at(-1, 1) + c + at(1, -1)]
        return torch.maximum(torch.maximum(lines[0], lines[1]), torch.maximum(lines[2], lines[3])) / 3

    def ink_map(self, x: torch.Tensor) -> torch.Tensor:
        """The map the threshold reads: `kind`, box or lines, and `train_kind` in training (plain attributes,
        so a probe can swap them)."""
        kind = self.train_kind if self.training else self.kind
        return self.line_map(x) if kind == "lines" else self.box_map(x)

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(cx, cy, zx, zy), each (B,): output point u (grid_sample's normalised coordinates) samples the
        input at cx + u / zx (x), cy + u / zy (y)."""
        H, W = x.shape[-2:]
        s = self.ink_map(x.float())
        rel = self.rel
        if self.training and self.jitter > 0:  # one threshold per image, in [rel, rel + jitter]
            rel = rel + self.jitter * torch.rand(x.shape[0], 1, 1, 1, device=x.device)
        ink = (s > rel * s.amax((2, 3), keepdim=True).clamp_min(1e-3)).float()
        x0, x1 = self._extent(ink.amax(2).flatten(1))
        y0, y1 = self._extent(ink.amax(3).flatten(1))
        zx = (W / (x1 - x0 + 2 * self.MARGIN)).clamp(1.0, self.zoom)
        zy = (H / (y1 - y0 + 2 * self.MARGIN)).clamp(1.0, self.zoom)
        zx, zy = torch.minimum(zx, zy * self.STRETCH), torch.minimum(zy, zx * self.STRETCH)
        return (x0 + x1) / W - 1, (y0 + y1) / H - 1, zx, zy  # the box's centre, normalised; the factors

    def forward(self, x: torch.Tensor, fit: tuple[torch.Tensor, ...] | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        """x (B, 1, H, W) in 0..1, enlarged by `fit` (`transform`'s result; computed here when not given)
        onto a canvas of x's size, or of `size` (progressive resizing: the same window, fewer pixels)."""
        H, W = size or x.shape[-2:]
        f = x.float()
        cx, cy, zx, zy = self.transform(f) if fit is None else fit
        ux, uy = (self.gx, self.gy) if size is None else (self.centres(W, x.device), self.centres(H, x.device))
        gx = (cx[:, None] + ux / zx[:, None])[:, None, :].expand(-1, H, -1)  # (B, H, W): where each output
        gy = (cy[:, None] + uy / zy[:, None])[:, :, None].expand(-1, -1, W)  # pixel samples the input
        out = F.grid_sample(f, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.to(x.dtype)


class SumHead(nn.Module):
    """37-way sum classifier over the left-to-right feature columns (height averaged, width kept)."""

    def __init__(self, c: int, drop: float, width: int, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Dropout(drop), nn.Linear(c * width, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(drop), nn.Linear(hidden, N_SUMS))

    def forward(self, f: torch.Tensor) -> torch.Tensor:  # f: (B, C, h, w)
        return self.mlp(f.mean(2))  # (B, 37)


class DigitReader(nn.Module):
    """Reads the four digits left to right from the feature columns.

    A bidirectional GRU runs along the width so every column knows what lies left and right of
    it (convolutions alone see ~2 digits: they cannot count); then each of the 4 slots attends over
    the columns with its own learned score and classifies what it pooled into 10 digits.
    """

    def __init__(self, c: int, drop: float, width: int, hidden: int = 128, rows: int = 0):
        super().__init__()
        self.rows = rows  # 0: a column's rows averaged; else that many rows stacked as channels
        self.rnn = nn.GRU(c * max(rows, 1), hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(2 * hidden, N_DIGITS)
        self.drop = nn.Dropout(drop)
        self.cls = nn.Linear(2 * hidden, N_CLASSES)

    def forward(self, f: torch.Tensor, states: bool = False):  # f: (B, C, h, w)
        """(B, 4, 10) digit logits; with `states`, also the columns' BiGRU states (B, w, 2H)."""
        cols = (f.float().flatten(1, 2) if self.rows else f.float().mean(2)).transpose(1, 2)  # (B, w, C or C*h)
        seq, _ = self.rnn(cols)  # (B, w, 2H)
        attn = self.score(seq).softmax(1)  # (B, w, 4): per slot, a distribution over columns
        slots = torch.einsum("bwk,bwh->bkh", attn, seq)  # (B, 4, 2H)
        out = self.cls(self.drop(slots))  # (B, 4, 10)
        return (out, seq) if states else out


class DigitQueries(nn.Module):
    """Reads the four digits with four learned queries that attend over every cell of the map (2-D).

    The BiGRU of `DigitReader` runs along the columns as there (it gives each column its place in
    the row: convolutions alone cannot count to four), and each cell is keyed by its own features
    plus its column's GRU state and its row. Slot k's query then pools the cells of the k-th digit
    wherever they lie: where two digits overlap in a column but sit at different heights, their
    cells stay apart, where a column mean mixes them. Multi-head attention written out in two
    einsums rather than nn.MultiheadAttention, whose inference fast path the TorchScript ONNX
    exporter does not take."""

    def __init__(self, c: int, drop: float, width: int, hidden: int = 128, rows: int = 1, heads: int = 4):
        super().__init__()  # `width`: unused, the readers' common signature (the cells carry their own)
        d = 2 * hidden
        self.heads = heads
        self.rnn = nn.GRU(c, hidden, batch_first=True, bidirectional=True)
        self.cell = nn.Linear(c, d)
        self.row = nn.Parameter(torch.randn(rows, 1, d) * 0.1)  # where a cell lies vertically (learned)
        self.norm = nn.LayerNorm(d)
        self.key, self.value, self.out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.queries = nn.Parameter(torch.randn(N_DIGITS, d) * d ** -0.5)
        self.drop = nn.Dropout(drop)
        self.cls = nn.Linear(d, N_CLASSES)

    def forward(self, f: torch.Tensor, states: bool = False):  # f: (B, C, h, w)
        """(B, 4, 10) digit logits; with `states`, also the columns' BiGRU states (B, w, d)."""
        f = f.float()
        h, d = self.heads, self.queries.shape[1]
        seq, _ = self.rnn(f.mean(2).transpose(1, 2))  # (B, w, d): each column in the context of the row
        cells = self.norm(self.cell(f.permute(0, 2, 3, 1)) + seq[:, None] + self.row).flatten(1, 2)  # (B, n, d)
        k = self.key(cells).unflatten(2, (h, d // h))  # (B, n, heads, d/heads)
        v = self.value(cells).unflatten(2, (h, d // h))
        q = self.queries.unflatten(1, (h, d // h))  # (4, heads, d/heads)
        attn = (torch.einsum("khe,bnhe->bkhn", q, k) * (d // h) ** -0.5).softmax(-1)  # per slot and head: over cells
        slots = self.out(torch.einsum("bkhn,bnhe->bkhe", attn, v).flatten(2))  # (B, 4, d)
        out = self.cls(self.drop(slots))  # (B, 4, 10)
        return (out, seq) if states else out


READERS = {"gru": DigitReader, "queries": DigitQueries}  # the digits head's readers (--reader)


def backbone_stages(backbone: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters by stage, input first: timm's coarse grouping (`group_matcher`), which the
    built-in CNNs also give (a stage per resolution)."""
    from timm.models import group_parameters
    if not hasattr(backbone, "group_matcher"):
        raise ModelError(f"{type(backbone).__name__} names no stages (timm's group_matcher): --freeze-out needs them")
    named = dict(backbone.named_parameters())
    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    return [[named[n] for n in names] for _, names in sorted(groups.items())]


def prune_stages(backbone: nn.Module, n: int, arch: str) -> None:
    """Remove the backbone's last `n` stages in place (timm's `prune_intermediate_layers`, which every
    timm family with `forward_intermediates` has): the head then reads the stage before them, and the
    removed stages cost nothing. A ResNet at output stride 16 computes its last stage dilated at the
    same 3 x 11 grid as the stage before, at four times the channels x channels: over half its FLOPs."""
    if not n:
        return
    if not hasattr(backbone, "prune_intermediate_layers"):
        raise ModelError(f"--prune-stages: {arch} has no stages to remove (built-in CNNs, and timm models without "
                         "prune_intermediate_layers)")
    stages = len(getattr(backbone, "feature_info", []))
    if n >= stages:
        raise ModelError(f"--prune-stages {n}: {arch} has {stages} stages (feature_info); keep at least one")
    backbone.prune_intermediate_layers(indices=[-1 - n], prune_norm=True, prune_head=True)


def _pyramid_levels(backbone: nn.Module, x: torch.Tensor) -> list[int] | None:
    """The two stages a pyramid merges: None for a built-in CNN (`forward_pyramid`); for a timm model,
    its last stage and the last one before it at a finer grid (resnet at output stride 16: the stride-8
    stage, 5 x 21 cells at 40 x 168 instead of 3 x 11). Token models have one grid: refused."""
    if hasattr(backbone, "forward_pyramid"):
        return None
    if getattr(backbone, "patch_embed", None) is not None or not hasattr(backbone, "forward_intermediates"):
        raise ModelError(f"--pyramid: {type(backbone).__name__} has no finer stage to merge (token models and "
                         "backbones without timm's forward_intermediates)")
    maps = backbone.forward_intermediates(x, indices=len(backbone.feature_info), intermediates_only=True)
    last = len(maps) - 1
    finer = [i for i, m in enumerate(maps) if m.shape[-1] > maps[last].shape[-1]]
    if not finer:
        raise ModelError(f"--pyramid: every stage of {type(backbone).__name__} has the same grid")
    return [finer[-1], last]


class MlnsNet(nn.Module):
    """Backbone features (B, C, h, w) -> a `sum` head (B, 37) or a `digits` head (B, 4, 10)."""

    def __init__(self, backbone: nn.Module, head: str, drop: float, size: tuple[int, int], columns: str = "mean",
                 pyramid: bool = False, zoom: float = 1.0, reader: str = "gru", boxes: bool = False,
                 ink_rel: float = InkFit.REL, ink_jitter: float = 0.0, ink_map: str = "box",
                 ink_map_train: str | None = None):
        super().__init__()
        self.backbone, self.head_name, self.tokens, self.size = backbone, head, False, tuple(size)
        self.canvas: tuple[int, int] | None = None  # training only: the input stage's output size (ProgressiveResize)
        self.fit = InkFit(zoom, size, ink_rel, ink_jitter, ink_map, ink_map_train) if zoom > 1 else None
        self.lateral, self.levels = None, None
        with torch.no_grad():  # feature-map shape at this image size (the heads' input size)
            was = backbone.training
            backbone.eval()  # no BatchNorm statistics from the dummy batch
            x = torch.zeros(2, 1, *size).to(next(backbone.parameters()))
            self.tokens = backbone.forward_features(x).ndim == 3
            if pyramid:
                self.levels = _pyramid_levels(backbone, x)
                fine, coarse = self.pyramid(x)
                self.lateral = nn.Conv2d(fine.shape[1], coarse.shape[1], 1)  # fine channels onto the coarse ones
            f = self.features(x)
            backbone.train(was)
        self.grid = f"{f.shape[-2]}x{f.shape[-1]}"  # the feature map the head reads (rows x columns)
        c, h, w = f.shape[1:]
        if head == "sum":
            self.head = SumHead(c, drop, w)
        else:  # the query reader always reads every row; the column reader stacks them only when told
            self.head = READERS[reader](c, drop, w, rows=h if reader == "queries" or columns == "stack" else 0)
        # --box-weight: which digits' boxes cover each column, read from the reader's column states (training only)
        self.boxes = nn.Linear(self.head.cls.in_features, N_CLASSES) if boxes and head == "digits" else None

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a finer level, the last level) of the backbone: built-in CNNs know theirs; a timm model hands
        out the two stages `levels` picked through its `forward_intermediates`."""
        if self.levels is None:
            return self.backbone.forward_pyramid(x)
        fine, coarse = self.backbone.forward_intermediates(x, indices=self.levels, intermediates_only=True)
        return fine, coarse

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.lateral is not None:  # the coarse map upsampled onto the finer one: FPN's top-down merge
            fine, coarse = self.pyramid(x)
            return F.interpolate(coarse, size=fine.shape[-2:], mode="nearest") + self.lateral(fine)
        if self.tokens:  # token models: the patch grid (B, C, h, w), prefix tokens dropped, final norm applied
            return self.backbone.forward_intermediates(x, indices=1, intermediates_only=True, norm=True)[-1]
        return self.backbone.forward_features(x)  # (B, C, h, w)

    def forward(self, x: torch.Tensor):  # x: (B, 1, H, W) in 0..1
        """The head's logits; in training with a box head, (logits, column logits (B, w, 10), the input x
        of each column's centre (B, w)) for `callbacks.BoxTarget`, which takes the tuple apart."""
        if self.boxes is None or not self.training:
            return self.head(self.features(self.inputs(x)))
        fit = self.fit.transform(x) if self.fit is not None else None  # once: the zoom and the columns' x
        out, seq = self.head(self.features(self.inputs(x, fit)), states=True)
        return out, self.boxes(seq), self.column_x(x, seq.shape[1], fit)

    def inputs(self, x: torch.Tensor, fit: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """x as the backbone reads it: ink-fitted, onto `canvas` when one is set (in training, by
        `callbacks.ProgressiveResize`), else at x's own size; without an ink fit, x resized to `canvas`."""
        size = self.canvas if self.training else None
        if self.fit is not None:
            return self.fit(x, fit, size)
        if size is not None:
            return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x

    def column_x(self, x: torch.Tensor, w: int, fit: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """(B, w): the input pixel x that the centre of each of the feature map's w columns reads, through
        the ink fit's zoom when there is one (`fit`: its `transform` of x, computed here when not given;
        a column spans W / w output pixels)."""
        W = x.shape[-1]
        u = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) * 2 / w - 1  # normalised, output
        if self.fit is None:
            g = u.expand(x.shape[0], -1)
        else:
            cx, _, zx, _ = self.fit.transform(x) if fit is None else fit
            g = cx[:, None] + u / zx[:, None]
        return ((g + 1) * W - 1) / 2


def create_model(cfg: ModelConfig, size: tuple[int, int]) -> MlnsNet:
    """The network of a run's model config for (H, W) = `size` images (`RunConfig.size`), with local
    pretrained backbone weights if given."""
    backbone = create_backbone(cfg.arch, cfg.pretrained, size=size, output_stride=cfg.output_stride)
    if cfg.backbone_weights:
        load_backbone_weights(backbone, cfg.backbone_weights)
    prune_stages(backbone, cfg.prune_stages, cfg.arch)  # after the weights: a file of the whole backbone still fits
    model = MlnsNet(backbone, cfg.head, cfg.drop, size, cfg.columns, cfg.pyramid, cfg.zoom, cfg.reader,
                    boxes=cfg.box_weight > 0, ink_rel=cfg.ink_rel, ink_jitter=cfg.ink_jitter,
                    ink_map=cfg.ink_map, ink_map_train=None if cfg.ink_map_train == "same" else cfg.ink_map_train)
    if cfg.init:
        load_init_weights(model, cfg.init)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, never unpickling arbitrary objects."""
    from safetensors import SafetensorError
    p = Path(path)
    if not p.is_file():
        hub_like = str(path).startswith(("hf-hub:", "hf_hub:", "timm/")) or not p.suffix
        raise ModelError(f"{path}: looks like a hub name; pretrained weights come only from a local file "
                         "and nothing is downloaded" if hub_like else f"{path}: weights file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(p))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
                sd = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(f"{p}: not a loadable weights file (it pickles Python objects, not just tensors; "
                         "refused: use a state dict of tensors or .safetensors)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, SafetensorError) as e:  # truncated / foreign
        raise ModelError(f"{p}: not a loadable weights file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{p}: expected a state dict of tensors")
    return sd


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load timm / torchvision ImageNet weights into a 1-channel backbone, adapting the first conv."""
    from timm.models import adapt_input_conv
    sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in read_state_dict(path).items()}
    own = backbone.state_dict()
    ok, bad = {}, []
    for k, v in sd.items():
        if k not in own:
            continue
        if v.ndim == 4 and own[k].ndim == 4 and v.shape[1] != own[k].shape[1] and v.shape[0] == own[k].shape[0]:
            v = adapt_input_conv(own[k].shape[1], v)  # RGB stem -> 1 channel (timm's own rule)
        if v.shape == own[k].shape:
            ok[k] = v
        else:
            bad.append(k)
    if bad or len(ok) < 0.5 * len(own):
        raise ModelError(f"{path}: weights do not match this architecture "
                         f"({len(ok)} of {len(own)} tensors fit, {len(bad)} of wrong shape)")
    backbone.load_state_dict(ok, strict=False)
    log.info("loaded %d / %d backbone tensors from %s", len(ok), len(own), path)


def load_init_weights(model: MlnsNet, path: str | Path) -> None:
    """Another run's weights as a starting point: every backbone tensor must fit (same architecture);
    head tensors are taken where their shapes match (a `sum` run can seed a `digits` backbone)."""
    sd, own = read_state_dict(path), model.state_dict()
    backbone = [k for k in own if k.startswith("backbone.")]
    misfit = [k for k in backbone if k not in sd or sd[k].shape != own[k].shape]
    if misfit:
        raise ModelError(f"{path}: its backbone does not fit this one ({len(misfit)} of {len(backbone)} tensors "
                         f"missing or of another shape, e.g. {misfit[0]}); --init needs the same --arch")
    head = [k for k in own if not k.startswith("backbone.") and k in sd and sd[k].shape == own[k].shape]
    model.load_state_dict({k: sd[k] for k in backbone + head}, strict=False)
    log.info("initialised from %s: backbone (%d tensors) and %d of %d head tensors", path, len(backbone),
             len(head), len(own) - len(backbone))
