"""Init container for ``model.url``: download a (.tar / .tar.gz) Hugging Face checkpoint
into the model volume, verifying its sha256 when given.

Runs as ``python -m trail_operator.fetch_model --url U --dest /models [--sha256 S]`` in
the server image (the distribution ships the operator package too). Nothing half-written
is ever left where the server looks: the archive and its extraction go to a staging
folder inside the volume, and only a complete, verified checkpoint is moved into place.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import httpx


def fetch(url: str, dest: Path, sha256: str | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for leftover in dest.glob(".fetch-*"):  # an earlier attempt that was killed mid-way
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest))
    try:
        archive, digest = staging / "archive", hashlib.sha256()
        with archive.open("wb") as out, httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.hexdigest() != sha256:
            raise ValueError(f"sha256 mismatch for {url}: expected {sha256}, got {digest.hexdigest()}")
        unpacked = staging / "checkpoint"
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")  # "data" refuses absolute paths and links out
        for item in unpacked.iterdir():
            shutil.move(str(item), dest / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--sha256")
    args = parser.parse_args(argv)
    try:
        fetch(args.url, args.dest, args.sha256)
    except (httpx.HTTPError, ValueError, tarfile.TarError, OSError) as error:
        print(f"fetch-model: {error}", file=sys.stderr)
        return 1
    print(f"fetch-model: {args.url} → {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
