"""Facts of the bundle format that every floor needs, with no imports: importing them costs nothing.

Each is defined here once; the runtime, export, training config, losses, data and search import it from here.
"""

from __future__ import annotations

__all__ = [
    "BROWSER_IMAGE_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "LOGIT_SCALE_MAX",
    "MANIFEST_FILE",
    "SHARD_IMAGE_EXTENSIONS",
    "TOKENIZER_FILE",
]

MANIFEST_FILE = "manifest.json"  # of a bundle, an index and a shard set alike
TOKENIZER_FILE = "tokenizer.json"  # of a bundle and a checkpoint

# The cap of CLIP's learned logit scale (exp of the temperature parameter): training clamps to it (config
# ``loss.logit_scale_max`` defaults to it), export writes at most the run's cap, the runtime assumes it when a
# manifest records none.
LOGIT_SCALE_MAX = 100.0

# Image files by extension (lower case, no dot): what the decoder reads from a folder, the subset every browser shows
# (the web target's gallery), and the fields a training shard stores its image under (in lookup order).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
BROWSER_IMAGE_EXTENSIONS = tuple(ext for ext in IMAGE_EXTENSIONS if ext not in ("tif", "tiff"))
SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
