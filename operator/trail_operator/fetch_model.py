"""Init container for ``model.url``: download a (.tar / .tar.gz) Hugging Face checkpoint
into the model volume, verifying its sha256 when given.

Runs as ``python -m trail_operator.fetch_model --url U --dest /models --max-bytes N
--deadline S [--sha256 H]`` in the server image (the distribution ships the operator
package too). Bounded: the download stops at ``--max-bytes`` (a larger Content-Length is
refused before any byte is read), the unpacked checkpoint may not exceed it either, and
the whole fetch must finish within ``--deadline`` seconds (a stalled server is cut off
by the read timeout). Nothing half-written is ever left where the server looks: the
archive and its extraction go to a staging folder inside the volume, removed on any
failure, and only a complete, verified checkpoint is moved into place.

Downloaded once per ``--dest``: a complete copy is marked (``MARKER``: the URL and sha256
it came from) and a later fetch of the same source finds it and downloads nothing. With
a cache claim every replica fetches into the same folder of the shared volume, so the
fetch holds an exclusive lock on it: pods started together wait for the first one's
download instead of repeating it (where the file system's locks reach across nodes, as
for huggingface_hub's own).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

READ_TIMEOUT_SECONDS = 60.0
MARKER = ".trail-fetched"  # in --dest once a complete copy is there: where it came from
LOCK = ".trail-fetch.lock"


class FetchError(ValueError):
    """The download broke a bound or failed its check; the message says which."""


def _download(url: str, archive: Path, max_bytes: int, deadline: float) -> str:
    """Stream ``url`` into ``archive``; its sha256."""
    digest, size = hashlib.sha256(), 0
    with archive.open("wb") as out, httpx.stream("GET", url, follow_redirects=True, timeout=READ_TIMEOUT_SECONDS) as r:
        r.raise_for_status()
        announced = int(r.headers.get("content-length") or 0)
        if announced > max_bytes:
            raise FetchError(f"{url} is {announced} bytes, over the limit of {max_bytes} (model.url.maxBytes)")
        for chunk in r.iter_bytes(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"{url} sent more than {max_bytes} bytes (model.url.maxBytes); stopped")
            if time.monotonic() > deadline:
                raise FetchError(f"{url}: not downloaded within the deadline ({size} bytes so far)")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path, max_bytes: int, deadline_seconds: float, sha256: str | None = None) -> bool:
    """Put the checkpoint at ``url`` into ``dest`` unless a complete copy of it is there;
    whether it was downloaded."""
    deadline = time.monotonic() + deadline_seconds
    dest.mkdir(parents=True, exist_ok=True)
    source = json.dumps({"url": url, "sha256": sha256 or ""})
    marker = dest / MARKER
    with (dest / LOCK).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        if marker.exists() and marker.read_text() == source:
            return False
        marker.unlink(missing_ok=True)
        _download_into(url, dest, max_bytes, deadline, sha256)
        marker.write_text(source)
    return True


def _download_into(url: str, dest: Path, max_bytes: int, deadline: float, sha256: str | None) -> None:
    for leftover in dest.glob(".fetch-*"):  # an earlier attempt that was killed mid-way
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest))
    try:
        archive = staging / "archive"
        got = _download(url, archive, max_bytes, deadline)
        if sha256 and got != sha256:
            raise FetchError(f"sha256 mismatch for {url}: expected {sha256}, got {got}")
        unpacked = staging / "checkpoint"
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            total = sum(member.size for member in members)
            if total > max_bytes:
                raise FetchError(f"{url} unpacks to {total} bytes, over the limit of {max_bytes} (model.url.maxBytes)")
            tar.extractall(unpacked, members=members, filter="data")  # "data" refuses absolute paths, links out
        archive.unlink()
        if time.monotonic() > deadline:
            raise FetchError(f"{url}: not unpacked within the deadline")
        for item in unpacked.iterdir():
            target = dest / item.name
            if target.is_dir():  # an earlier copy, incomplete or of another source
                shutil.rmtree(target)
            item.replace(target)  # a rename within the volume: all or nothing per item
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--sha256")
    parser.add_argument("--max-bytes", type=int, required=True, help="largest archive (and unpacked size) accepted")
    parser.add_argument("--deadline", type=float, required=True, help="seconds for the whole fetch")
    args = parser.parse_args(argv)
    try:
        downloaded = fetch(args.url, args.dest, args.max_bytes, args.deadline, args.sha256)
    except (httpx.HTTPError, ValueError, tarfile.TarError, OSError) as error:
        print(f"fetch-model: {error}", file=sys.stderr)
        return 1
    print(f"fetch-model: {args.url} → {args.dest}" if downloaded else f"fetch-model: {args.dest} has {args.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
