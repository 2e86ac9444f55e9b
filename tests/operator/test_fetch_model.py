"""The model-download init container (`python -m trail_operator.fetch_model`) against a
real HTTP server on loopback serving real tar archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trail_operator.fetch_model import main


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def write_archive(path: Path, files: dict[str, bytes]) -> str:
    """A .tar.gz holding ``files``; returns its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


CHECKPOINT = {"SmolLM2/config.json": b'{"hidden_size": 576}', "SmolLM2/model.safetensors": b"\0" * 4096}


def test_downloads_verifies_and_unpacks_a_checkpoint(served, tmp_path, capsys):
    root, base = served
    sha = write_archive(root / "model.tar.gz", CHECKPOINT)
    dest = tmp_path / "models"
    assert main(["--url", f"{base}/model.tar.gz", "--dest", str(dest), "--sha256", sha]) == 0
    assert (dest / "SmolLM2" / "config.json").read_bytes() == CHECKPOINT["SmolLM2/config.json"]
    assert (dest / "SmolLM2" / "model.safetensors").stat().st_size == 4096
    assert [p.name for p in dest.iterdir()] == ["SmolLM2"]  # the download itself is gone
    assert "model.tar.gz" in capsys.readouterr().out


def test_a_wrong_sha256_fails_and_unpacks_nothing(served, tmp_path, capsys):
    root, base = served
    write_archive(root / "model.tar.gz", CHECKPOINT)
    dest = tmp_path / "models"
    assert main(["--url", f"{base}/model.tar.gz", "--dest", str(dest), "--sha256", "0" * 64]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert list(dest.iterdir()) == []


def test_a_missing_file_is_a_clear_error(served, tmp_path, capsys):
    _, base = served
    assert main(["--url", f"{base}/nope.tar.gz", "--dest", str(tmp_path / "models")]) == 1
    assert "404" in capsys.readouterr().err


def test_an_archive_escaping_the_volume_is_refused(served, tmp_path, capsys):
    root, base = served
    write_archive(root / "evil.tar.gz", {"../outside.txt": b"gotcha"})
    dest = tmp_path / "models"
    assert main(["--url", f"{base}/evil.tar.gz", "--dest", str(dest)]) == 1
    assert "fetch-model:" in capsys.readouterr().err
    assert not (tmp_path / "outside.txt").exists()


def test_something_that_is_not_an_archive_is_refused(served, tmp_path, capsys):
    root, base = served
    (root / "model.tar.gz").write_text("<html>login page</html>")
    assert main(["--url", f"{base}/model.tar.gz", "--dest", str(tmp_path / "models")]) == 1
    assert "fetch-model:" in capsys.readouterr().err
