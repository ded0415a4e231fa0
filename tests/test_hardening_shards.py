"""Hardening, round two (issue 27), data and index classes: duplicate keys, compressed-tar bombs, names that are not
UTF-8, a damaged shard under data.in_memory, index build --out a file, remote 4xx answers and links in folders."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest
from helpers.data import write_shard_set
from helpers.images import jpeg_bytes

from dcclip.data.shard_build import build_shards
from dcclip.data.shard_inspect import inspect_shards
from dcclip.data.shard_validate import validate_shards
from dcclip.data.shards import ShardError, iter_tar_samples, parse_meta

MB = 1024 * 1024


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _meta(caption: str) -> bytes:
    return json.dumps({"captions": {"en": caption}, "source_lang": "en"}).encode()


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in members:
            _member(tar, name, data)
    return path


# ------------------------------------------------------------------------------------------------ duplicate keys


@pytest.fixture
def duplicated(tmp_path) -> Path:
    """Adjacent samples with the same key (a, a), then b, then a again later in the shard."""
    members = [("a.jpg", jpeg_bytes(1)), ("a.json", _meta("first")), ("a.jpg", jpeg_bytes(2))]
    members += [("a.json", _meta("second")), ("b.jpg", jpeg_bytes(3)), ("b.json", _meta("bee"))]
    members += [("a.jpg", jpeg_bytes(4)), ("a.json", _meta("third"))]
    return _tar(tmp_path / "dup-000000.tar", members)


def test_duplicate_keys_are_never_merged_and_every_reader_counts_them(duplicated, tmp_path):
    samples = list(iter_tar_samples(duplicated))
    assert [s["__key__"] for s in samples] == ["a", "a", "b", "a"]
    assert parse_meta(samples[0])["captions"] == {"en": "first"}
    for sample in (samples[1], samples[3]):  # what the training reader (parse_meta, then skip and count) sees
        with pytest.raises(ShardError, match=r"duplicate key 'a'"):
            parse_meta(sample)
    report = validate_shards(duplicated, progress=False)
    assert not report.ok and report.samples == 4
    assert [p.key for p in report.problems] == ["a", "a"] and all("duplicate key" in p.reason for p in report.problems)
    assert inspect_shards(duplicated)["duplicates"] == 2
    manifest = build_shards("wds", str(duplicated), tmp_path / "out", progress=False)
    assert manifest["samples"] == 2
    assert [row["reason"].split(":")[0] for row in manifest["skipped"]] == ["duplicate key", "duplicate key"]
    kept = {
        s["__key__"]: parse_meta(s)["captions"]["en"] for s in iter_tar_samples(tmp_path / "out" / "shard-000000.tar")
    }
    assert kept == {"a": "first", "b": "bee"}


# ------------------------------------------------------------------------------------------------ tar bombs

BOMB_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from dcclip.data.shard_validate import validate_shards
    from dcclip.data.shard_inspect import inspect_shards
    from dcclip.data.shard_build import build_shards
    from dcclip.search.inputs import shard_inputs

    def vm_bytes():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    # a cap well under what reading the 512 MiB member whole takes, well over what streaming past it needs
    cap = vm_bytes() + 320 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    bomb, out = sys.argv[1], Path(sys.argv[2])
    report = validate_shards(bomb, progress=False)
    print("VALIDATE", report.samples, [(p.key, p.reason) for p in report.problems])
    print("INSPECT", inspect_shards(bomb)["oversized"])
    manifest = build_shards("wds", bomb, out, progress=False)
    print("BUILD", manifest["samples"], [row["reason"] for row in manifest["skipped"]])
    print("INDEX", [(i.key, i.problem is None) for i in shard_inputs(bomb)])
    """
)


def _gzip_bomb(path: Path, claimed: int) -> Path:
    """A .tar.gz of a few MB on disk: sample ``bomb`` with a member of ``claimed`` zero bytes, then a good sample."""
    with tarfile.open(path, "w:gz", compresslevel=1, format=tarfile.GNU_FORMAT) as tar:
        _member(tar, "before.jpg", jpeg_bytes(0))
        _member(tar, "before.json", _meta("before"))
        info = tarfile.TarInfo("bomb.jpg")
        info.size = claimed
        tar.addfile(info, _Zeros(claimed))
        _member(tar, "bomb.json", _meta("bomb"))
        _member(tar, "after.jpg", jpeg_bytes(1))
        _member(tar, "after.json", _meta("after"))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_a_compressed_tar_bomb_is_refused_by_member_naming_shard_and_key_under_a_memory_cap(tmp_path):
    bomb = _gzip_bomb(tmp_path / "bomb-000000.tar.gz", 512 * MB)
    assert bomb.stat().st_size < 4 * MB
    done = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, str(bomb), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert (
        "bomb" in lines["VALIDATE"]
        and "over the limit" in lines["VALIDATE"]
        and "bomb-000000.tar.gz" in lines["VALIDATE"]
    )
    assert lines["VALIDATE"].startswith("3 ")  # before, bomb, after: the sample after the bomb is read
    assert lines["INSPECT"] == "1"
    assert lines["BUILD"].startswith("2 ") and "member too large" in lines["BUILD"]
    assert lines["INDEX"] == "[('before', True), ('bomb', False), ('after', True)]"


def test_the_member_limit_is_documented_and_can_be_changed(tmp_path, monkeypatch):
    from dcclip.data import shards

    assert shards.MAX_MEMBER_BYTES == 64 * MB
    path = _tar(tmp_path / "s.tar", [("k.jpg", jpeg_bytes(0)), ("k.json", _meta("x")), ("big.jpg", bytes(3 * MB))])
    monkeypatch.setenv("DCCLIP_MAX_MEMBER_MB", "2")
    samples = list(iter_tar_samples(path))
    assert parse_meta(samples[0])["captions"] == {"en": "x"} and "over the limit" in samples[1]["__error__"]
    monkeypatch.setenv("DCCLIP_MAX_MEMBER_MB", "lots")
    with pytest.raises(ShardError, match="DCCLIP_MAX_MEMBER_MB"):
        list(iter_tar_samples(path))


# ------------------------------------------------------------------------------------------------ names not UTF-8


def test_tar_member_names_that_are_not_utf8_do_not_abort_a_build(tmp_path):
    from helpers.serve_bundles import onnx_bundle

    from dcclip.search.build import build_index

    # one sample with a Latin-1 name and a caption, one with a Latin-1 name and none (skipped and listed), one plain
    members = [("caf\udce9.jpg", jpeg_bytes(0)), ("caf\udce9.json", _meta("cafe")), ("n\udcff.jpg", jpeg_bytes(1))]
    shard = _tar(tmp_path / "names-000000.tar", [*members, ("ok.jpg", jpeg_bytes(2)), ("ok.json", _meta("ok"))])
    manifest = build_shards("wds", str(shard), tmp_path / "out", progress=False)
    assert manifest["samples"] == 2 and len(manifest["skipped"]) == 1
    assert "\\xff" in manifest["skipped"][0]["source"]
    assert not (tmp_path / "out" / ".build-unfinished").exists()
    summary = build_index(onnx_bundle(tmp_path / "bundle"), shard, tmp_path / "index", progress=False)
    assert summary["count"] == 3
    items = (tmp_path / "index" / "items.jsonl").read_text("utf-8")
    assert "caf\\\\xe9" in items  # kept under its escaped name


def test_folder_file_names_that_are_not_utf8_do_not_abort_a_build(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    raw = os.fsencode(folder)
    for name, seed in ((b"caf\xe9.jpg", 0), (b"ok.jpg", 1)):
        with open(os.path.join(raw, name), "wb") as handle:
            handle.write(jpeg_bytes(seed))
        with open(os.path.join(raw, name[:-4] + b".txt"), "wb") as handle:
            handle.write(b"a caption")
    with open(os.path.join(raw, b"notes\xff.bin"), "wb") as handle:
        handle.write(b"x")
    manifest = build_shards("folder", folder, tmp_path / "out", progress=False)
    assert manifest["samples"] == 2 and len(manifest["skipped"]) == 1
    assert "\\xff" in manifest["skipped"][0]["source"]
    assert not (tmp_path / "out" / ".build-unfinished").exists()


# ------------------------------------------------------------------------------------------------ in_memory


def test_in_memory_decoding_skips_a_damaged_shard_like_the_streaming_reader(tmp_path):
    from dcclip.data.memory import decode_shard_set
    from dcclip.runtime.preprocess import Preprocess

    shards = write_shard_set(tmp_path / "set", 6, 3)
    damaged = shards / "shard-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:3000])
    decoded = decode_shard_set(str(shards), [Preprocess(image_size=16)])
    assert len(decoded) >= 3 and str(damaged) in decoded.skipped


# ------------------------------------------------------------------------------------------------ remote 4xx


class _NotFound(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_error(404)

    def log_message(self, *args) -> None:
        return None


def test_a_remote_404_is_final_and_named(monkeypatch):
    from dcclip.data.sources import RemoteOptions

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shard-000000.tar"
        options = RemoteOptions(timeout_s=5, retries=4, backoff_s=0.01)
        with pytest.raises(ShardError, match=r"HTTP 404") as caught:
            list(iter_tar_samples(url, options))
        assert "truncated or corrupt" not in str(caught.value)
        assert _NotFound.hits <= 2  # the read, and one probe for the status: never four retries
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------------ links in folders


def _folder_with_links(tmp_path: Path) -> Path:
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg_bytes(9))
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(jpeg_bytes(0))
    (folder / "sub" / "b.jpg").write_bytes(jpeg_bytes(1))
    (folder / "outside.jpg").symlink_to(outside)
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    os.mkfifo(folder / "pipe.jpg")
    return folder


def test_links_and_special_files_in_an_image_folder_are_not_followed_and_every_one_is_counted(tmp_path):
    from dcclip.search.inputs import count_inputs, iter_inputs

    folder = _folder_with_links(tmp_path)
    inputs = list(iter_inputs(folder))
    assert [i.source for i in inputs if i.problem is None] == ["a.jpg", "sub/b.jpg"]
    problems = {i.source: i.problem for i in inputs if i.problem is not None}
    assert set(problems) == {"outside.jpg", "dangling.jpg", "loop", "pipe.jpg"}
    assert "dangling" in problems["dangling.jpg"] and "FIFO" in problems["pipe.jpg"]
    assert count_inputs(folder) == 6
    manifest = build_shards("folder", folder, tmp_path / "out", progress=False)
    assert {Path(row["source"]).name for row in manifest["skipped"] if row["reason"].startswith("not a file")} == set(
        problems
    )


def test_index_build_out_an_existing_file_is_a_one_line_error(tmp_path, capsys):
    from helpers.serve_bundles import onnx_bundle

    from dcclip.cli import main

    bundle = onnx_bundle(tmp_path / "bundle")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg_bytes(0))
    out = tmp_path / "taken"
    out.write_text("a file")
    assert main(["index", "build", "--bundle", str(bundle), "--images", str(images), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not a directory" in err and err.count("\n") == 1
