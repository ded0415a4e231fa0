"""What an image index is built from: a folder of image files (recursive, sorted) or any shard source.

Inputs stream in a fixed order, so a build that stopped can skip exactly the inputs it already finished. A shard that
turns out truncated or unreadable becomes one problem input (listed in skipped.jsonl) and the build goes on with the
next shard, keeping the samples it read before the damage.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dcclip.data.shard_build import SOURCE_IMAGE_EXTENSIONS
from dcclip.data.shards import MANIFEST_NAME, ShardError, image_field, iter_tar_samples, shard_paths
from dcclip.data.sources import is_local, local_path

__all__ = ["IndexInput", "check_source", "count_inputs", "is_image_folder", "iter_inputs"]


@dataclass(frozen=True)
class IndexInput:
    """One image to index: its key, its source (path relative to the folder, or ``shard#key``) and where its bytes
    are; ``problem`` says why an input cannot be used at all (a sample without an image, a damaged shard)."""

    key: str
    source: str
    path: Path | None = None
    data: bytes | None = None
    problem: str | None = None

    def read(self) -> bytes:
        """The encoded image (OSError when the file cannot be read)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise OSError(self.problem or f"{self.source}: no image")
        return self.path.read_bytes()


def is_image_folder(images: str | os.PathLike) -> bool:
    """A local directory of image files, rather than a shard set (which has a manifest or ``*.tar`` files on top)."""
    text = str(images)
    if "::" in text or not is_local(text) or not local_path(text).is_dir():
        return False
    root = local_path(text)
    return not ((root / MANIFEST_NAME).is_file() or any(root.glob("*.tar")))


def folder_images(root: Path) -> list[Path]:
    """Image files under ``root`` with the extensions ``dcclip shards build`` reads; recursive, sorted, not hidden."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower().lstrip(".") in SOURCE_IMAGE_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def iter_inputs(images: str | os.PathLike) -> Iterator[IndexInput]:
    """Every input of a folder or shard source, in a fixed order."""
    if is_image_folder(images):
        root = local_path(str(images))
        for path in folder_images(root):
            relative = path.relative_to(root).as_posix()
            yield IndexInput(key=relative.rsplit(".", 1)[0], source=relative, path=path)
        return
    for url in shard_paths(images):
        yield from shard_inputs(str(local_path(url).resolve()) if is_local(url) else url)


def shard_inputs(url: str) -> Iterator[IndexInput]:
    """The samples of one shard; a damaged shard ends in one problem input instead of stopping the build."""
    try:
        for sample in iter_tar_samples(url):
            key = sample["__key__"]
            field = image_field(sample)
            if field is None:
                yield IndexInput(key=key, source=f"{url}#{key}", problem="sample has no jpg/jpeg/png/webp image")
            else:
                yield IndexInput(key=key, source=f"{url}#{key}", data=sample[field])
    except ShardError as exc:
        yield IndexInput(key="", source=str(url), problem=str(exc))


def check_source(images: str | os.PathLike) -> None:
    """Refuse a folder with no image file in it (an index of nothing is a mistake), naming any tars found below it."""
    if not is_image_folder(images) or folder_images(local_path(str(images))):
        return
    root = local_path(str(images))
    tars = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tar"))[:3]
    hint = f"; it holds tar shards ({', '.join(tars)}): pass those as --images" if tars else ""
    raise ValueError(f"{root}: no image files ({', '.join(SOURCE_IMAGE_EXTENSIONS)}) in this folder{hint}")


def count_inputs(images: str | os.PathLike) -> int | None:
    """How many inputs a folder holds (for the progress bar); None for shards, which would have to be read twice."""
    return len(folder_images(local_path(str(images)))) if is_image_folder(images) else None
