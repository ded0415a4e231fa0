"""dcclip: compress multilingual CLIP models for edge devices (distill, align, export, serve)."""

__version__ = "0.1.0"
