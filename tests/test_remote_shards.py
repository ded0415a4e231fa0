"""Remote shard sources: loopback HTTP, pipe:, fsspec URLs; retries, timeouts and skips; cache-teacher to fsspec."""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.data import write_shard_set

from dcclip.cli import main
from dcclip.config import DataConfig
from dcclip.data.pipeline import ShardLoader
from dcclip.data.shards import ShardError, iter_tar_samples, shard_paths
from dcclip.data.sources import shard_name
from dcclip.runtime.preprocess import Preprocess

PRE = Preprocess(image_size=32)
N_SHARDS = 4


class ShardServer(http.server.ThreadingHTTPServer):
    """A loopback file server whose ``rules`` make chosen files misbehave: cut, cut-once, stall, missing."""

    daemon_threads = True

    def __init__(self, root: Path):
        handler = functools.partial(_Handler, directory=str(root))
        super().__init__(("127.0.0.1", 0), handler)
        self.rules: dict[str, str] = {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        self.server.requests.append(name)
        rule = self.server.rules.get(name)
        if rule == "cut-once":
            self.server.rules.pop(name)
        if rule in ("cut", "cut-once", "stall"):
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if rule == "stall":
                time.sleep(20)
            return  # the connection closes with half the promised bytes sent
        if rule == "missing":
            self.send_error(404)
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    return write_shard_set(tmp_path_factory.mktemp("remote") / "set", n=24, per_shard=6)


@pytest.fixture()
def server(shard_dir):
    srv = ShardServer(shard_dir.parent)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def quick_retries(monkeypatch):
    monkeypatch.setenv("DCCLIP_SHARD_RETRIES", "1")
    monkeypatch.setenv("DCCLIP_SHARD_BACKOFF", "0.01")
    monkeypatch.setenv("DCCLIP_SHARD_TIMEOUT", "2")


def pattern(base: str) -> str:
    return f"{base}/set/shard-{{000000..{N_SHARDS - 1:06d}}}.tar"


def batches(tokenizer, train: str, **overrides) -> tuple[list[dict], ShardLoader]:
    settings = {"train": train, "batch_size": 5, "workers": 0, "shuffle_buffer": 8, "max_text_len": 16}
    settings["langs"] = ("ar", "en", "fr", "hi", "zh")  # a brace pattern has no manifest to name them
    settings.update(resampled=False, **overrides)
    stream = ShardLoader(DataConfig(**settings), PRE, tokenizer, seed=3)
    return list(stream), stream


def same_batches(a: list[dict], b: list[dict]) -> None:
    assert [x["keys"] for x in a] == [y["keys"] for y in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x["pixels"].numpy(), y["pixels"].numpy())
        assert np.array_equal(x["input_ids"].numpy(), y["input_ids"].numpy())
        assert x["texts"] == y["texts"]


def test_http_pipe_and_fsspec_sources_give_the_batches_local_files_give(shard_dir, server, tokenizer):
    import fsspec

    memory = fsspec.filesystem("memory")
    for tar in sorted(shard_dir.glob("*.tar")):
        memory.pipe(f"/dcclip-test/set/{tar.name}", tar.read_bytes())
    local, _ = batches(tokenizer, str(shard_dir))
    assert sum(len(b["keys"]) for b in local) == 24
    sources = {
        "http pattern": pattern(server.url),
        "http shard-set folder (its manifest)": f"{server.url}/set/",
        "pipe:cat": f"pipe:cat {shard_dir}/shard-{{000000..{N_SHARDS - 1:06d}}}.tar",
        "fsspec memory://": pattern("memory://dcclip-test"),
    }
    for name, source in sources.items():
        remote, stream = batches(tokenizer, source)
        same_batches(local, remote)
        assert stream.skipped_samples == 0, name


def test_a_remote_shard_set_gives_its_manifest_counts(shard_dir, server, tokenizer):
    stream = ShardLoader(DataConfig(train=f"{server.url}/set"), PRE, tokenizer)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert stream.total_samples == 24 and stream.langs == sorted(manifest["langs"])
    assert shard_paths(f"{server.url}/set") == [f"{server.url}/set/shard-{i:06d}.tar" for i in range(N_SHARDS)]


def test_a_shard_cut_once_is_read_again_without_repeating_samples(shard_dir, server, tokenizer, quick_retries):
    local, _ = batches(tokenizer, str(shard_dir))
    server.rules["set/shard-000001.tar"] = "cut-once"
    remote, stream = batches(tokenizer, pattern(server.url))
    same_batches(local, remote)
    assert server.requests.count("set/shard-000001.tar") == 2 and stream.skipped_samples == 0


def test_a_shard_cut_every_time_is_retried_then_skipped_counted_and_named(shard_dir, server, tokenizer, quick_retries):
    server.rules["set/shard-000002.tar"] = "cut"
    url = f"{server.url}/set/shard-000002.tar"
    with pytest.raises(ShardError, match=r"curl exit 18.*gave up after 2 attempts") as err:
        list(iter_tar_samples(url))
    assert url in str(err.value)
    remote, stream = batches(tokenizer, pattern(server.url))
    keys = [k for b in remote for k in b["keys"]]
    whole = [f"s{i:05d}" for i in range(24) if not 12 <= i < 18]
    assert set(whole) <= set(keys) and len(keys) == len(set(keys)) < 24  # the cut shard keeps what arrived whole
    assert stream.skipped_samples == 1
    assert [u for b in remote for u in b["failed_shards"]] == [url]


@pytest.mark.slow
def test_a_missing_shard_and_a_stalled_server_fail_with_the_reason(server, monkeypatch):
    monkeypatch.setenv("DCCLIP_SHARD_RETRIES", "0")
    monkeypatch.setenv("DCCLIP_SHARD_TIMEOUT", "1")
    server.rules["set/shard-000000.tar"] = "missing"
    with pytest.raises(ShardError, match=r"the server answered HTTP 404 \(final: not retried\)"):
        list(iter_tar_samples(f"{server.url}/set/shard-000000.tar"))
    server.rules["set/shard-000001.tar"] = "stall"
    with pytest.raises(ShardError, match=r"curl exit 28: timed out"):
        list(iter_tar_samples(f"{server.url}/set/shard-000001.tar"))


def test_a_failing_pipe_command_names_its_status(quick_retries):
    with pytest.raises(ShardError, match=r"exited with status 3"):
        list(iter_tar_samples("pipe:exit 3"))


def test_an_unknown_url_scheme_asks_for_its_fsspec_backend():
    with pytest.raises(ShardError, match=r"nosuchproto://.*install the fsspec backend"):
        list(iter_tar_samples("nosuchproto://bucket/shard-000000.tar"))


def test_shard_names_of_every_source_kind():
    assert shard_name("pipe:aws s3 cp s3://b/x/shard-000007.tar -") == "shard-000007.tar"
    assert shard_name("https://host/a/shard-000001.tar?token=1") == "shard-000001.tar"
    assert shard_name("/data/shard-000002.tar") == "shard-000002.tar"


def test_validate_inspect_and_tokenizer_read_remote_sources(shard_dir, server, tmp_path, capsys):
    assert main(["shards", "validate", f"{server.url}/set/"]) == 0
    assert "24" in capsys.readouterr().out
    assert main(["shards", "inspect", pattern(server.url), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 24
    args = ["tokenizer", "train", "--shards", f"pipe:cat {shard_dir}/shard-{{000000..000003}}.tar"]
    assert main([*args, "--vocab-size", "320", "--out", str(tmp_path / "tok")]) == 0
    assert (tmp_path / "tok" / "tokenizer.json").is_file()


@pytest.mark.slow
def test_cache_teacher_reads_http_writes_fsspec_and_stage1_trains_from_both(
    toy_world, world_tokenizer_path, saved_teacher_spec, tmp_path, quick_retries
):
    import fsspec
    from helpers.stages import cache

    from dcclip.config import load_config
    from dcclip.stages.build import run_stage
    from dcclip.stages.cache_teacher import run as cache_teacher

    srv = ShardServer(toy_world)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        train = f"{srv.url}/train/"
        cfg = load_config(None, [f"data.train={train}", f"teacher.spec={saved_teacher_spec}", "teacher.batch_size=32"])
        summary = cache_teacher(cfg, "memory://dcclip-feats")
        assert summary["shards_failed"] == 0 and summary["samples_encoded"] == 160
        local = cache(toy_world, saved_teacher_spec, tmp_path / "local-feats")
        memory = fsspec.filesystem("memory")
        for tar in sorted(local.glob("*.tar")):
            assert memory.cat(f"/dcclip-feats/{tar.name}") == tar.read_bytes()
        assert json.loads(memory.cat("/dcclip-feats/teacher.json"))["shards"] == sorted(
            p.name for p in (toy_world / "train").glob("*.tar")
        )

        srv.rules["train/shard-000001.tar"] = "cut"
        run = load_config(None, [
            "stage=distill", f"data.train={train}", "data.features=memory://dcclip-feats", "data.batch_size=16",
            "data.workers=0", "student.model=test-student", f"student.tokenizer={world_tokenizer_path}",
            f"teacher.spec={saved_teacher_spec}", f"train.out_dir={tmp_path / 'run'}", "train.log_every=1",
            "train.steps=6", "data.resampled=false",
        ])  # fmt: skip
        run_stage(run)
    finally:
        srv.shutdown()
        srv.server_close()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    named = [url for r in records for url in r.get("unreadable_shards", [])]
    assert f"{srv.url}/train/shard-000001.tar" in named
    assert sum(r["skipped_samples"] for r in records) >= 1


@pytest.mark.slow
def test_eval_reads_a_remote_clip_benchmark_set_like_the_local_one(toy_world, saved_teacher_spec, tmp_path, capsys):
    srv = ShardServer(toy_world)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        reports = {}
        for name, dataset in {"local": toy_world / "eval" / "shapes", "http": f"{srv.url}/eval/shapes"}.items():
            args = ["eval", "zeroshot", "--model", saved_teacher_spec, "--dataset", str(dataset)]
            assert main([*args, "--langs", "en,zh", "--out", str(tmp_path / name), "--batch-size", "32"]) == 0
            reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    finally:
        srv.shutdown()
        srv.server_close()
    capsys.readouterr()
    assert reports["http"]["results"] == reports["local"]["results"]
    assert reports["http"]["dataset"]["path"] == f"{srv.url}/eval/shapes"
    assert reports["http"]["dataset"]["samples"] == reports["local"]["dataset"]["samples"] == 90
