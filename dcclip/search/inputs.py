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

from dcclip.data.shard_build import walk_folder
from dcclip.data.shards import (
    ERROR_FIELD,
    MANIFEST_NAME,
    ShardError,
    escape_name,
    image_field,
    iter_tar_samples,
    shard_paths,
)
from dcclip.data.sources import is_local, local_path
from dcclip.runtime.constants import IMAGE_EXTENSIONS

__all__ = ["IndexInput", "check_source", "count_inputs", "is_image_file", "is_image_folder", "iter_inputs"]


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


def is_image_file(images: str | os.PathLike) -> bool:
    """One local image file (by extension), indexed on its own rather than read as a shard."""
    text = str(images)
    return "::" not in text and is_local(text) and local_path(text).is_file() and _is_image_name(local_path(text))


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


def folder_images(root: Path) -> list[Path]:
    """Image files under ``root`` with the extensions ``dcclip shards build`` reads; recursive, sorted, not hidden;
    regular files only (symbolic links are not followed: see ``walk_folder``)."""
    return [path for path in walk_folder(root)[0] if _is_image_name(path)]


def folder_inputs(root: Path) -> Iterator[IndexInput]:
    """The images of a folder in order, then every link or special file met, as a problem input (counted)."""
    files, skipped = walk_folder(root)
    for path in files:
        if _is_image_name(path):
            relative = escape_name(path.relative_to(root).as_posix())  # names that are not UTF-8, escaped
            yield IndexInput(key=relative.rsplit(".", 1)[0], source=relative, path=path)
    for path, why in skipped:
        relative = escape_name(path.relative_to(root).as_posix())
        yield IndexInput(key=relative, source=relative, problem=why)


def iter_inputs(images: str | os.PathLike) -> Iterator[IndexInput]:
    """Every input of a folder, a single image file or a shard source, in a fixed order."""
    if is_image_file(images):
        path = local_path(str(images))
        yield IndexInput(key=escape_name(path.stem), source=escape_name(path.name), path=path)
        return
    if is_image_folder(images):
        yield from folder_inputs(local_path(str(images)))
        return
    for url in shard_paths(images):
        yield from shard_inputs(str(local_path(url).resolve()) if is_local(url) else url)


def shard_inputs(url: str) -> Iterator[IndexInput]:
    """The samples of one shard; a damaged shard ends in one problem input instead of stopping the build."""
    try:
        for sample in iter_tar_samples(url):
            key = sample["__key__"]
            field = image_field(sample)
            if ERROR_FIELD in sample:
                yield IndexInput(key=key, source=f"{url}#{key}", problem=sample[ERROR_FIELD])
            elif field is None:
                yield IndexInput(key=key, source=f"{url}#{key}", problem="sample has no jpg/jpeg/png/webp image")
            else:
                yield IndexInput(key=key, source=f"{url}#{key}", data=sample[field])
    except ShardError as exc:
        yield IndexInput(key="", source=str(url), problem=str(exc))


def check_source(images: str | os.PathLike) -> None:
    """Refuse a folder with no image file in it (an index of nothing is a mistake), naming any tars found below it;
    refuse a local file that is neither an image nor a tar, instead of reading it as a shard."""
    text = str(images)
    if is_local(text) and "::" not in text and local_path(text).is_file():
        path = local_path(text)
        if not (_is_image_name(path) or path.suffix.lower() == ".tar"):
            formats = ", ".join(IMAGE_EXTENSIONS)
            raise ValueError(
                f"{path}: neither an image file ({formats}) nor a .tar shard; give an image, a folder or shards"
            )
        return
    if not is_image_folder(images) or folder_images(local_path(str(images))):
        return
    root = local_path(str(images))
    tars = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tar"))[:3]
    hint = f"; it holds tar shards ({', '.join(tars)}): pass those as --images" if tars else ""
    raise ValueError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder{hint}")


def count_inputs(images: str | os.PathLike) -> int | None:
    """How many inputs a folder holds (for the progress bar); None for shards, which would have to be read twice."""
    if is_image_file(images):
        return 1
    if not is_image_folder(images):
        return None
    files, skipped = walk_folder(local_path(str(images)))
    return sum(_is_image_name(path) for path in files) + len(skipped)
