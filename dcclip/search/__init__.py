"""Image search over a bundle: building an index of a folder or shard source, adding to it, and querying it.

Building reads shards (``dcclip.data``), so it lives here, above the runtime; the index format and the search itself
are torch-free and live in ``dcclip/runtime/index.py`` so that a server needs only the runtime.
"""

from __future__ import annotations

from dcclip.search.build import add_to_index, build_index
from dcclip.search.query import search_index

__all__ = ["add_to_index", "build_index", "search_index"]
