"""mlns-fast: fastai + timm rapid experiments for four-digit handwritten sums.

The notebook API (`mlns_fast.api`): `train`, `lr_find`, `evaluate`, `predict`, `load_run`, `compare`.
They load on first use, so `import mlns_fast` is quick and imports no deep-learning library.
"""
from __future__ import annotations

import importlib
import warnings

__version__ = "0.1.0"
__all__ = ["train", "lr_find", "evaluate", "predict", "load_run", "compare", "__version__"]


def __getattr__(name: str):
    """PEP 562 lazy re-export of the API. fastai's own import calls `torch.jit.script`, which newer torch
    marks deprecated with a FutureWarning: silenced here, for that import only."""
    if name not in __all__:
        raise AttributeError(f"module 'mlns_fast' has no attribute {name!r}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
        api = importlib.import_module(".api", __name__)
    return getattr(api, name)
