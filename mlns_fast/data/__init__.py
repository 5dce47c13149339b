"""Data: real sources, handwriting banks, the synthetic renderer, the demo stand-in, DataLoaders."""
from .sources import Samples, load_source, load_sources, load_images
from .mnist import Bank, load_bank, embedded_bank
from .render import Renderer, Rendered

__all__ = ["Samples", "load_source", "load_sources", "load_images", "Bank", "load_bank",
           "embedded_bank", "Renderer", "Rendered"]
