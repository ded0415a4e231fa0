"""Shard sources as byte streams: local paths, ``pipe:CMD``, ``http(s)://`` and fsspec URLs (``s3://``, ``gs://``).

Pipes and HTTP go through webdataset's ``gopen`` (HTTP as a ``curl`` pipe with bounded timeouts, so a dead server
fails a read instead of hanging it); other URL schemes through ``fsspec`` when its backend is installed. How long and
how often remote reads are tried is set with environment variables (they reach DataLoader workers and every command):

- ``DCCLIP_SHARD_TIMEOUT`` seconds to connect, and the longest stall in a transfer (default 30);
- ``DCCLIP_SHARD_RETRIES`` further attempts after a failed read of a remote shard (default 3);
- ``DCCLIP_SHARD_BACKOFF`` seconds before the first retry, doubled for each next one (default 1).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

STREAM_SCHEMES = ("pipe:",)
CURL_SCHEMES = ("http://", "https://")
# What curl's exit status means, for messages a person can act on (curl's man page, "EXIT CODES").
CURL_EXIT = {
    6: "could not resolve the host",
    7: "could not connect to the server",
    18: "the transfer ended before the whole file arrived",
    22: "the server answered with an HTTP error (e.g. 404 or 5xx)",
    28: "timed out (no connection, or the transfer stalled)",
    35: "TLS handshake failed",
    52: "the server closed the connection without a reply",
    56: "the connection was reset while receiving",
}


class SourceError(OSError):
    """A shard source cannot be opened or read; the message names the URL."""


class FinalSourceError(SourceError):
    """A failure that another attempt cannot change (no reader for the URL, an HTTP 4xx answer): not retried."""


class NoReaderError(FinalSourceError):
    """Nothing installed here can read this kind of URL: retrying cannot help."""


# HTTP answers that mean "try again later": every other 4xx is final (404, 403, 401, 410 ...), 5xx is retried.
RETRYABLE_4XX = (408, 425, 429)
CURL_HTTP_ERROR = 22


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        return float(value) if value else default
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} is not a number") from exc


@dataclass(frozen=True)
class RemoteOptions:
    """Timeout, retries and backoff for remote shards; defaults come from the ``DCCLIP_SHARD_*`` variables."""

    timeout_s: float = field(default_factory=lambda: _env_float("DCCLIP_SHARD_TIMEOUT", 30.0))
    retries: int = field(default_factory=lambda: int(_env_float("DCCLIP_SHARD_RETRIES", 3)))
    backoff_s: float = field(default_factory=lambda: _env_float("DCCLIP_SHARD_BACKOFF", 1.0))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): exponential backoff."""
        return self.backoff_s * 2**attempt


def is_local(url: str | Path) -> bool:
    """Whether a shard source names a file on this machine (a plain path or ``file://``)."""
    text = str(url)
    return text.startswith("file://") or ("://" not in text and not text.startswith(STREAM_SCHEMES))


def local_path(url: str | Path) -> Path:
    """The file a local shard source names."""
    text = str(url)
    return Path(text.removeprefix("file://")) if text.startswith("file://") else Path(text)


def describe(url: str | Path) -> str:
    """A shard URL as it may be shown in logs: credentials in ``user:password@host`` are masked."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return text


def open_stream(url: str | Path, options: RemoteOptions | None = None) -> IO[bytes]:
    """Open a shard source for sequential binary reading; raises SourceError naming the URL."""
    text = str(url)
    if is_local(text):
        return open(local_path(text), "rb")
    options = options or RemoteOptions()
    if text.startswith(STREAM_SCHEMES):
        return _gopen(text)
    if text.startswith(CURL_SCHEMES):
        if shutil.which("curl"):
            return _gopen("pipe:" + curl_command(text, options))
        return _fsspec_open(text, "install curl, or fsspec's HTTP backend (pip install aiohttp)")
    return _fsspec_open(text, f"install the fsspec backend for {text.split('://', 1)[0]}:// (e.g. s3fs, gcsfs)")


def curl_command(url: str, options: RemoteOptions) -> str:
    """The curl command that streams ``url`` to stdout: fails on HTTP errors, gives up on no connection or a stall.

    curl's own retries stay off: the reader retries the whole shard and skips samples it already produced. curl stays
    silent (a reader that stops early closes the pipe on purpose); its exit status is put in words instead.
    """
    seconds = str(max(1, round(options.timeout_s)))
    args = ["curl", "--fail", "--silent", "--location", "--connect-timeout", seconds]
    args += ["--speed-limit", "1", "--speed-time", seconds, "--", url]
    return shlex.join(args)


def _gopen(url: str) -> IO[bytes]:
    import webdataset as wds

    try:
        return wds.gopen(url, "rb")
    except (OSError, ValueError) as exc:
        raise SourceError(f"{describe(url)}: cannot open ({exc})") from exc


def _fsspec_open(url: str, hint: str) -> IO[bytes]:
    try:
        import fsspec
    except ImportError as exc:
        raise NoReaderError(f"{describe(url)}: reading this URL needs fsspec (pip install fsspec); {hint}") from exc
    try:
        return fsspec.open(url, "rb").open()
    except (ImportError, ValueError) as exc:  # fsspec names the missing package in its message
        raise NoReaderError(f"{describe(url)}: no reader for this URL ({exc}); {hint}") from exc
    except OSError as exc:
        raise SourceError(f"{describe(url)}: cannot open ({exc})") from exc


def transport_problem(stream: Any, url: str | Path) -> str | None:
    """Why a pipe's command failed (its exit status; in words for curl), or None when it has not failed (yet)."""
    proc = getattr(stream, "proc", None)
    if proc is None:
        return None
    try:  # the command closes its output just before it exits: give it a moment to report why
        status = proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return None
    if status == 0:
        return None
    if str(url).startswith(CURL_SCHEMES):
        if status == CURL_HTTP_ERROR:
            return http_error(str(url))
        return f"curl exit {status}: {CURL_EXIT.get(status, 'see curl(1), EXIT CODES')}"
    return f"the command exited with status {status}"


def http_error(url: str, options: RemoteOptions | None = None) -> str:
    """Words for curl's exit 22 ("the server answered with an HTTP error"), with the status the server gives now."""
    code = http_status(url, options or RemoteOptions())
    if code is None:
        return f"curl exit {CURL_HTTP_ERROR}: {CURL_EXIT[CURL_HTTP_ERROR]}"
    final = " (final: not retried)" if is_final_status(code) else ""
    return f"the server answered HTTP {code}{final}"


def http_status(url: str, options: RemoteOptions) -> int | None:
    """The HTTP status a GET of ``url``'s first byte answers (None when there is no answer): one short request."""
    seconds = str(max(1, round(options.timeout_s)))
    command = ["curl", "--silent", "--location", "--output", "/dev/null", "--write-out", "%{http_code}"]
    command += ["--range", "0-0", "--max-time", seconds, "--", url]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=options.timeout_s + 5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    code = done.stdout.strip()
    return int(code) if code.isdigit() and code != "000" else None


def is_final_status(code: int) -> bool:
    """A 4xx other than 408/425/429: the request itself is wrong (missing file, no access), so a retry is pointless."""
    return 400 <= code < 500 and code not in RETRYABLE_4XX


def is_final(reason: object) -> bool:
    """Whether a failure (an exception, or ``transport_problem``'s words) cannot change on another attempt."""
    return isinstance(reason, FinalSourceError) or "(final: not retried)" in str(reason)


def close_stream(stream: Any, url: str | Path, finished: bool) -> None:
    """Close a shard stream. A pipe read to the end is checked (a failed command raises SourceError); one left early
    (the reader stopped, or the tar was broken) has its command stopped without waiting on it.
    """
    proc = getattr(stream, "proc", None)
    if proc is None:
        stream.close()
        return
    if not finished:
        stream.ignore_errors = True
        if proc.poll() is None:
            proc.kill()
        stream.close()
        return
    while stream.read(1 << 16):  # the tar's end padding, so the command exits on its own
        pass
    try:
        stream.close()
    except OSError as exc:
        raise SourceError(f"{describe(url)}: {transport_problem(stream, url) or exc}") from exc


def shard_name(url: str | Path) -> str:
    """The file name of a shard source (``pipe:aws s3 cp s3://b/shard-000001.tar -`` -> ``shard-000001.tar``)."""
    text = str(url)
    if text.startswith(STREAM_SCHEMES):
        tars = [token for token in shlex.split(text[len("pipe:") :]) if ".tar" in token]
        if not tars:
            raise SourceError(f"{text}: cannot tell the shard's name; name a .tar in the command")
        text = tars[-1]
    return text.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def looks_like_set_directory(part: str) -> bool:
    """Whether a remote source names a shard-set folder (read through its manifest) rather than tars."""
    name = part.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return not is_local(part) and not part.startswith(STREAM_SCHEMES) and "{" not in part and ".tar" not in name


def join(base: str | Path, name: str) -> str:
    """``base/name`` for a local folder or a URL."""
    if is_local(base):
        return str(local_path(base) / name)
    return f"{str(base).rstrip('/')}/{name}"


def read_bytes(url: str | Path, options: RemoteOptions | None = None) -> bytes:
    """The whole content of a small file (a manifest, teacher.json) at a local path or URL, retried like shards."""
    if is_local(url):
        return local_path(url).read_bytes()
    options = options or RemoteOptions()
    for attempt in range(options.retries + 1):
        stream = None
        try:
            stream = open_stream(url, options)
            data = stream.read()
            close_stream(stream, url, finished=True)
            return data
        except OSError as exc:
            problem = transport_problem(stream, url) if stream is not None else None
            if stream is not None:
                close_stream(stream, url, finished=False)
            if attempt == options.retries or is_final(problem or exc):
                error = FinalSourceError if is_final(problem or exc) else SourceError
                raise error(f"{describe(url)}: cannot read ({problem or exc})") from exc
            time.sleep(options.delay(attempt))
    raise AssertionError("unreachable")


def exists(url: str | Path) -> bool:
    """Whether a file exists at a local path or fsspec URL (output locations; HTTP is read-only)."""
    if is_local(url):
        return local_path(url).is_file()
    fs, path = _filesystem(str(url))
    return fs.exists(path)


def upload(local: Path, url: str) -> None:
    """Copy a finished local file to an fsspec URL (object stores make it visible only once complete)."""
    fs, path = _filesystem(url)
    fs.put_file(str(local), path)


def _filesystem(url: str) -> tuple[Any, str]:
    if url.startswith(CURL_SCHEMES + STREAM_SCHEMES):
        raise SourceError(f"{describe(url)}: cannot write here; write to a local folder or an fsspec URL (s3://…)")
    try:
        import fsspec
    except ImportError as exc:
        raise SourceError(f"{describe(url)}: writing to a URL needs fsspec (pip install fsspec)") from exc
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"{describe(url)}: no fsspec backend for this URL ({exc})") from exc
