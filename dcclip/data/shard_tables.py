"""Table sources of ``dcclip shards build`` (CSV and JSONL): rows, their image paths and caption columns, checked.

An image column holding URLs is refused up front (dcclip reads local files; img2dataset downloads).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcclip.data.shard_build import (
    _Candidate,
    _clean_captions,
    _looks_like_language,
    _object_captions,
    _parse_json,
    _Skip,
)


@dataclass
class Row:
    """One CSV/JSONL row: its cells, where it came from, and a problem found while reading it."""

    origin: str
    cells: dict[str, Any] = field(default_factory=dict)
    problem: _Skip | None = None


def csv_rows(path: Path, image_column: str, langs: tuple[str, ...] | None) -> tuple[list[str], list[Row]]:
    """Header and rows of a CSV, decoded per row so one non-UTF-8 row is skipped instead of the whole file."""
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name for name in (reader.fieldnames or []) if name is not None]
    _check_header(path, header, image_column, langs)
    rows: list[Row] = []
    while True:
        origin = f"{path}:{reader.line_num + 1}"
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.append(Row(origin, problem=_Skip("bad row", f"CSV parse error ({exc})")))
            continue
        rows.append(_csv_row(origin, cells))
    return header, rows


def _check_header(path: Path, header: list[str], image_column: str, langs: tuple[str, ...] | None) -> None:
    """A CSV whose header lacks the image column or a requested language is a usage error, not a per-row skip."""
    if not header:
        raise ValueError(f"{path}: empty CSV, expected a header row with an {image_column!r} column")
    if any(_has_surrogates(name) for name in header):
        raise ValueError(f"{path}: the header row is not UTF-8")
    if image_column not in header:
        raise ValueError(f"{path}: no {image_column!r} column (columns: {', '.join(header)}); set image_column")
    missing = [lang for lang in langs or () if lang not in header]
    if missing:
        raise ValueError(f"{path}: language columns {missing} not in the header (columns: {', '.join(header)})")


def _csv_row(origin: str, cells: dict[str | None, Any]) -> Row:
    """A parsed CSV row; cells that held invalid UTF-8 make the whole row a skip naming those columns."""
    clean = {name: value for name, value in cells.items() if name is not None}
    bad = [name for name, value in clean.items() if isinstance(value, str) and _has_surrogates(value)]
    if bad:
        return Row(origin, clean, _Skip("not UTF-8", f"row is not valid UTF-8 in column(s) {', '.join(bad)}"))
    return Row(origin, clean)


def _has_surrogates(text: str) -> bool:
    """Whether text decoded with ``surrogateescape`` carried bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def language_columns(header: Iterable[str], image_column: str) -> list[str]:
    """Caption columns of a table when none are given: every column named like a language code."""
    return [name for name in header if name != image_column and _looks_like_language(name)]


def jsonl_rows(path: Path) -> list[Row]:
    """Rows of a JSONL file, each line decoded and parsed on its own so a bad line is skipped alone."""
    rows = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if raw.strip():
            rows.append(_jsonl_row(f"{path}:{number}", raw))
    return rows


def _jsonl_row(origin: str, raw: bytes) -> Row:
    """One JSONL line as a row, or a row carrying the reason it cannot be read."""
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        return Row(origin, problem=_Skip("not UTF-8", f"line is not UTF-8 (bad byte at offset {exc.start})"))
    try:
        obj = _parse_json(text, "line")
    except _Skip as skip:
        return Row(origin, problem=skip)
    if not isinstance(obj, dict):
        return Row(origin, problem=_Skip("bad row", f"line must be a JSON object, not {type(obj).__name__}"))
    return Row(origin, obj)


def table_candidate(
    base: Path, row: Row, source_lang: str, langs: tuple[str, ...] | None, image_column: str
) -> _Candidate:
    """Turn a CSV/JSONL row into a candidate: image path (relative to the table's folder), key, captions."""
    cells = row.cells
    image_value = cells.get(image_column)
    image = _table_image(base, image_value)
    key = cells.get("key")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str) or not key.strip():
        key = Path(image_value).with_suffix("").as_posix() if isinstance(image_value, str) else row.origin
    cand = _Candidate(key=key.strip(), source=row.origin, image=image, problem=row.problem)
    if cand.problem is None:
        try:
            cand.captions, cand.source_lang = _row_captions(cells, source_lang, langs, image_column)
            if image is None:
                raise _Skip("missing image", f"no image path in column {image_column!r}")
        except _Skip as skip:
            cand.problem = skip
    return cand


def _table_image(base: Path, value: Any) -> Path | None:
    """Image path of a row: absolute as given, else relative to the folder holding the CSV/JSONL."""
    if not isinstance(value, str) or not value.strip():
        return None
    path = Path(value.strip())
    return path if path.is_absolute() else base / path


def _row_captions(
    cells: dict[str, Any], source_lang: str, langs: tuple[str, ...] | None, image_column: str
) -> tuple[dict[str, str], str]:
    """Captions of a row: a nested ``captions`` object, else the language columns; plus its source language."""
    if isinstance(cells.get("captions"), dict):
        return _object_captions(cells, source_lang, langs, "row")
    columns = list(langs) if langs is not None else language_columns(cells, image_column)
    row_lang = cells.get("source_lang")
    row_lang = row_lang.strip() if isinstance(row_lang, str) and row_lang.strip() else source_lang
    return _clean_captions({lang: cells.get(lang) for lang in columns}, "row"), row_lang


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def refuse_urls(src: Path, rows: list[Row], image_column: str) -> None:
    """Image URLs are not downloaded here: refuse up front, naming the first URL as written and img2dataset."""
    for row in rows:
        value = row.cells.get(image_column)
        if isinstance(value, str) and _URL.match(value.strip()):
            kind = "csv" if src.suffix.lower() == ".csv" else "jsonl"
            raise ValueError(
                f"{row.origin}: column {image_column!r} holds a URL ({value.strip()}); dcclip reads local image files "
                f"and does not download. Fetch the images first with img2dataset (img2dataset --url_list {src} "
                f"--input_format {kind} --url_col {image_column} --output_format webdataset --output_folder shards), "
                f"then: dcclip shards build --from wds shards --out OUT --caption-lang LANG"
            )
