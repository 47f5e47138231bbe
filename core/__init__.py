"""domainfm: self-supervised domain foundation models (core: backbones, objectives, methods, engine)."""

__version__ = "0.1.0"
