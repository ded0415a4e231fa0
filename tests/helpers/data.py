"""Generated shard sets with captions in a few scripts."""

from __future__ import annotations

from pathlib import Path

from helpers.images import jpeg_bytes

CAPTIONS = {
    "en": "a red circle",
    "zh": "一个红色的圆形",
    "fr": "un cercle rouge",
    "ar": "دائرة حمراء",
    "hi": "एक लाल वृत्त",
}


def write_shard_set(out: Path, n: int, per_shard: int, langs_of=None, extra_fields=None) -> Path:
    """Write ``n`` samples into shards of ``per_shard`` with captions in a few languages."""
    from dcclip.data.shards import ShardSetWriter

    with ShardSetWriter(out, max_count=per_shard) as writer:
        for i in range(n):
            langs = langs_of(i) if langs_of else list(CAPTIONS)
            captions = {lang: f"{CAPTIONS[lang]} {i}" for lang in langs}
            fields = {"jpg": jpeg_bytes(i)}
            if extra_fields:
                fields.update(extra_fields(i))
            writer.add(f"s{i:05d}", fields, {"captions": captions, "source_lang": "en"})
    return out
