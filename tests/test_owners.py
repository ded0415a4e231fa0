"""One owner per fact, checked by reading the source: each fact below is defined in one module and imported elsewhere.

A module listed under ``PENDING`` still holds its own copy of a fact until its owner switches it to the import named
in the reason; the check fails as soon as a copy appears anywhere else, and when a pending copy is gone the entry must
be removed (``test_pending_copies_still_exist``), so the list only shrinks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("dcclip", "stages", "export")

# fact -> (pattern of a definition or copy, the one module allowed to hold it)
FACTS = {
    "bundle format name": (r"[\"']dcclip-bundle[\"']", "dcclip/runtime/manifest.py"),
    "index format name": (r"[\"']dcclip-index[\"']", "dcclip/runtime/manifest.py"),
    "shard-set format name": (r"[\"']dcclip-shards[\"']", "dcclip/data/shard_manifest.py"),
    "tokenizer file name": (r"[\"']tokenizer\.json[\"']", "dcclip/runtime/constants.py"),
    "logit-scale cap": (r"LOGIT_SCALE_MAX\s*=|clamp\(max=100|logit_scale[\"'], 100", "dcclip/runtime/constants.py"),
    "checkpoint weights file": (r"[\"']model\.safetensors[\"']|[\"']trainer_state\.pt[\"']", "dcclip/checkpoint.py"),
    "image extensions": (r"[\"']\.?jpe?g[\"'],\s*[\"']\.?(?:jpeg|png|webp)[\"']", "dcclip/runtime/constants.py"),
    "preprocessing choices": (r"^(?:RESIZE_MODES|INTERPOLATIONS)\s*=", "dcclip/runtime/preprocess.py"),
    "optional import with a hint": (r"^def require\(", "dcclip/runtime/optional.py"),
    "hub offline check": (r"HF_HUB_OFFLINE[\"'], [\"']{2}\)\.|constants\.HF_HUB_OFFLINE", "dcclip/runtime/optional.py"),
    "progress bar": (r"^def progress_bar\(", "dcclip/data/progress.py"),
    "interleaved timer": (r"^def interleaved_\w+\(", "dcclip/runtime/timing.py"),
    "machine info": (r"^def (?:cpu_model|machine_info)\(", "dcclip/runtime/timing.py"),
}
# (fact, module) -> the change its owner has to make
PENDING = {}


def holders(pattern: str) -> set[str]:
    """Source files (relative paths) with a line matching ``pattern``."""
    regex = re.compile(pattern, re.M)
    found = set()
    for folder in SOURCES:
        for path in (REPO / folder).rglob("*.py"):
            if regex.search(path.read_text("utf-8")):
                found.add(path.relative_to(REPO).as_posix())
    return found


@pytest.mark.parametrize("fact", FACTS)
def test_each_fact_has_one_owner(fact: str) -> None:
    pattern, owner = FACTS[fact]
    found = holders(pattern)
    assert owner in found, f"{fact}: its owner {owner} no longer defines it"
    pending = {module for (name, module) in PENDING if name == fact}
    assert found - {owner} - pending == set(), f"{fact}: copies outside {owner}; import it from there"


def test_pending_copies_still_exist() -> None:
    gone = [(fact, module) for (fact, module) in PENDING if module not in holders(FACTS[fact][0])]
    assert not gone, f"these copies are gone: remove them from PENDING: {gone}"
