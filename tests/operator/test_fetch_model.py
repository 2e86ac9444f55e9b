"""The model-download init container (`python -m trail_operator.fetch_model`) against a
real HTTP server on loopback serving real tar archives, and servers that misbehave: too
large, lying about the size, too slow. Whatever fails leaves nothing in the volume."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trail_operator.fetch_model import LOCK, MARKER, main

LIMIT = ["--max-bytes", str(1 << 20), "--deadline", "30"]


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


class Endless(BaseHTTPRequestHandler):
    """Sends zeros without a Content-Length, slowly if asked (path /slow), until cut off."""

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"\0" * 65536)
                if self.path == "/slow":
                    time.sleep(0.2)
        except OSError:  # the client stopped reading
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endless():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def write_archive(path: Path, files: dict[str, bytes]) -> str:
    """A .tar.gz holding ``files``; returns its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint(dest: Path) -> list[str]:
    """What the server would see in ``dest`` (the lock file aside)."""
    return sorted(p.name for p in dest.iterdir() if p.name != LOCK)


CHECKPOINT = {"SmolLM2/config.json": b'{"hidden_size": 576}', "SmolLM2/model.safetensors": b"\0" * 4096}


def test_downloads_verifies_and_unpacks_a_checkpoint(served, tmp_path, capsys):
    root, base = served
    sha = write_archive(root / "model.tar.gz", CHECKPOINT)
    dest = tmp_path / "models"
    assert main(["--url", f"{base}/model.tar.gz", "--dest", str(dest), "--sha256", sha, *LIMIT]) == 0
    assert (dest / "SmolLM2" / "config.json").read_bytes() == CHECKPOINT["SmolLM2/config.json"]
    assert (dest / "SmolLM2" / "model.safetensors").stat().st_size == 4096
    assert checkpoint(dest) == [MARKER, "SmolLM2"]  # the download itself is gone
    assert "model.tar.gz" in capsys.readouterr().out


def test_a_wrong_sha256_fails_and_unpacks_nothing(served, tmp_path, capsys):
    root, base = served
    write_archive(root / "model.tar.gz", CHECKPOINT)
    dest = tmp_path / "models"
    assert main(["--url", f"{base}/model.tar.gz", "--dest", str(dest), "--sha256", "0" * 64, *LIMIT]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert checkpoint(dest) == []


def test_a_missing_file_is_a_clear_error(served, tmp_path, capsys):
    _, base = served
    assert main(["--url", f"{base}/nope.tar.gz", "--dest", str(tmp_path / "models"), *LIMIT]) == 1
    assert "404" in capsys.readouterr().err


def test_an_archive_escaping_the_volume_is_refused(served, tmp_path, capsys):
    root, base = served
    write_archive(root / "evil.tar.gz", {"../outside.txt": b"gotcha"})
    dest = tmp_path / "models"
    assert main(["--url", f"{base}/evil.tar.gz", "--dest", str(dest), *LIMIT]) == 1
    assert "fetch-model:" in capsys.readouterr().err
    assert not (tmp_path / "outside.txt").exists()


def test_something_that_is_not_an_archive_is_refused(served, tmp_path, capsys):
    root, base = served
    (root / "model.tar.gz").write_text("<html>login page</html>")
    assert main(["--url", f"{base}/model.tar.gz", "--dest", str(tmp_path / "models"), *LIMIT]) == 1
    assert "fetch-model:" in capsys.readouterr().err


def test_an_archive_announced_over_the_cap_is_refused_before_reading(served, tmp_path, capsys):
    root, base = served
    write_archive(root / "big.tar.gz", {"m/model.safetensors": bytes(range(256)) * 8192})  # ~2 MiB, poorly compressible
    dest = tmp_path / "models"
    assert main(["--url", f"{base}/big.tar.gz", "--dest", str(dest), "--max-bytes", "1000", "--deadline", "30"]) == 1
    assert "over the limit of 1000 (model.url.maxBytes)" in capsys.readouterr().err
    assert checkpoint(dest) == []


def test_a_download_without_a_size_stops_at_the_cap(endless, tmp_path, capsys):
    dest = tmp_path / "models"
    started = time.monotonic()
    assert main(["--url", f"{endless}/zeros", "--dest", str(dest), *LIMIT]) == 1
    assert "sent more than 1048576 bytes" in capsys.readouterr().err
    assert time.monotonic() - started < 10
    assert checkpoint(dest) == []  # the partial archive is gone


def test_a_download_past_the_deadline_is_cut_off(endless, tmp_path, capsys):
    dest = tmp_path / "models"
    args = ["--url", f"{endless}/slow", "--dest", str(dest), "--max-bytes", str(1 << 30), "--deadline", "1"]
    started = time.monotonic()
    assert main(args) == 1
    assert "within the deadline" in capsys.readouterr().err
    assert time.monotonic() - started < 5
    assert checkpoint(dest) == []


def test_an_archive_unpacking_past_the_cap_is_refused(served, tmp_path, capsys):
    root, base = served
    write_archive(root / "bomb.tar.gz", {"m/zeros.bin": b"\0" * (4 << 20)})  # a few KiB, 4 MiB unpacked
    assert (root / "bomb.tar.gz").stat().st_size < 1 << 20
    dest = tmp_path / "models"
    assert main(["--url", f"{base}/bomb.tar.gz", "--dest", str(dest), *LIMIT]) == 1
    assert "unpacks to 4194304 bytes" in capsys.readouterr().err
    assert checkpoint(dest) == []


def test_a_restarted_fetch_replaces_the_earlier_copy(served, tmp_path):
    root, base = served
    write_archive(root / "model.tar.gz", CHECKPOINT)
    dest = tmp_path / "models"
    (dest / "SmolLM2").mkdir(parents=True)
    (dest / "SmolLM2" / "stale.bin").write_bytes(b"old")
    (dest / ".fetch-killed").mkdir()  # an attempt killed mid-way
    assert main(["--url", f"{base}/model.tar.gz", "--dest", str(dest), *LIMIT]) == 0
    assert sorted(p.name for p in (dest / "SmolLM2").iterdir()) == ["config.json", "model.safetensors"]
    assert checkpoint(dest) == [MARKER, "SmolLM2"]


def test_a_complete_copy_is_not_downloaded_again(served, tmp_path, capsys):
    root, base = served
    write_archive(root / "model.tar.gz", CHECKPOINT)
    write_archive(root / "other.tar.gz", {"Other/config.json": b"{}"})
    dest = tmp_path / "models"
    assert main(["--url", f"{base}/model.tar.gz", "--dest", str(dest), *LIMIT]) == 0
    (root / "model.tar.gz").unlink()  # a second download would now fail
    assert main(["--url", f"{base}/model.tar.gz", "--dest", str(dest), *LIMIT]) == 0
    assert capsys.readouterr().out.endswith(f"{dest} has {base}/model.tar.gz\n")
    assert main(["--url", f"{base}/other.tar.gz", "--dest", str(dest), *LIMIT]) == 0  # another source: fetched
    assert checkpoint(dest) == [MARKER, "Other", "SmolLM2"]


class Counted(SimpleHTTPRequestHandler):
    """Serves its folder slowly, counting the downloads (pods sharing a cache claim)."""

    downloads = 0

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        type(self).downloads += 1
        time.sleep(0.5)  # long enough for the other fetch to reach the lock
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


def test_fetches_into_one_folder_at_once_download_once(tmp_path):
    """Two pods sharing a cache claim, started together: the second waits for the first's copy."""
    root = tmp_path / "www"
    root.mkdir()
    write_archive(root / "model.tar.gz", CHECKPOINT)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Counted, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dest, url = tmp_path / "cache" / "models" / "key", f"http://127.0.0.1:{server.server_address[1]}/model.tar.gz"
    codes: list[int] = []
    argv = ["--url", url, "--dest", str(dest), *LIMIT]
    pods = [threading.Thread(target=lambda: codes.append(main(argv))) for _ in "ab"]
    for pod in pods:
        pod.start()
    for pod in pods:
        pod.join(30)
    server.shutdown()
    assert codes == [0, 0] and Counted.downloads == 1
    assert checkpoint(dest) == [MARKER, "SmolLM2"]
