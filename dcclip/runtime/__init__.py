"""Torch-free inference over an exported bundle: onnxruntime, numpy, pillow and tokenizers only."""
