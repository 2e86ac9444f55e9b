"""Where a probe may come from, against a real local HTTP server and real files.

The server runs in a thread, so a download that blocked the event loop would also hold
up the concurrent ``/health`` request the non-blocking test times.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from trail_contract.admin_api import ProbeSource
from trail_scheduler.server.admin import AdminToken, build_admin_app
from trail_scheduler.server.probe_source import MAX_REDIRECTS, ProbeFetchError, ProbeSources

PAYLOAD = b"probe bytes " * 100
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        path = self.path
        if path == "/probe":
            self._send(200, PAYLOAD)
        elif path == "/gzip":
            self._send(200, PAYLOAD, {"Content-Encoding": "gzip"})
        elif path == "/big-declared":
            self._send(200, b"x" * 2048)
        elif path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"100\r\n" + b"x" * 256 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up: expected
                for byte in PAYLOAD[:40]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
        elif path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[1])
            self._send(302, b"", {"Location": "/probe" if hops == 0 else f"/redirect/{hops - 1}"})
        elif path.startswith("/to?"):
            self._send(302, b"", {"Location": path.removeprefix("/to?")})
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


async def fetch(url: str, sha256: str = SHA, **options) -> bytes:
    return await ProbeSources(**options).fetch(ProbeSource(url=url, sha256=sha256))


async def refused(url: str, sha256: str = SHA, **options) -> str:
    with pytest.raises(ProbeFetchError) as caught:
        await fetch(url, sha256, **options)
    return str(caught.value)


# -- http(s) ------------------------------------------------------------------------


async def test_a_probe_downloads_and_is_checked(server):
    assert await fetch(f"{server}/probe") == PAYLOAD
    message = await refused(f"{server}/probe", sha256="1" * 64)
    assert message == "the probe's sha256 does not match probe.sha256" and SHA not in message


async def test_redirects_are_followed_by_hand_up_to_the_limit(server):
    assert await fetch(f"{server}/redirect/{MAX_REDIRECTS - 1}") == PAYLOAD
    assert "more than 3 times" in await refused(f"{server}/redirect/{MAX_REDIRECTS}")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("file:///etc/passwd", "redirected away from http(s)"),
        ("http://169.254.169.254/latest/meta-data/", "link-local or cloud metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata service"),
        ("http://h:99999/x", "redirected to an invalid URL"),
    ],
)
async def test_every_redirect_hop_is_checked_again(server, target, message):
    assert message in await refused(f"{server}/to?{target}")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/missing", "answered HTTP 404"),
        ("/gzip", "came compressed"),
        ("/big-declared", "over the 1024-byte limit"),
        ("/big-chunked", "over the 1024-byte limit"),
    ],
)
async def test_bad_downloads_are_refused(server, path, message):
    assert message in await refused(f"{server}{path}", max_bytes=1024)


async def test_a_slow_server_meets_the_deadline(server):
    started = time.monotonic()
    assert "took longer than 0.5 s" in await refused(f"{server}/trickle", deadline=0.5)
    assert time.monotonic() - started < 1.5


async def test_an_unreachable_host_is_a_short_message():
    message = await refused("http://127.0.0.1:9/probe")  # the discard port: nothing listens
    assert message == "cannot download the probe from 127.0.0.1: ConnectError"


@pytest.mark.parametrize(
    ("url", "addresses", "message"),
    [
        ("http://169.254.169.254/x", None, "link-local or cloud metadata"),
        ("http://[fe80::1]/x", None, "link-local or cloud metadata"),
        ("http://[fd00:ec2::254]/x", None, "link-local or cloud metadata"),
        ("http://[::ffff:169.254.169.254]/x", None, "link-local or cloud metadata"),
        ("http://metadata.google.internal/x", None, "cloud metadata service"),
        ("http://innocent.example/x", ["93.184.216.34", "169.254.10.10"], "link-local or cloud metadata"),
        ("http://innocent.example/x", [], "cannot resolve"),
    ],
)
async def test_link_local_and_metadata_addresses_are_never_fetched(url, addresses, message):
    async def resolver(host, port):
        return addresses

    options = {} if addresses is None else {"resolver": resolver}
    assert message in await refused(url, **options)


async def test_only_the_allowed_hosts_when_some_are_given(server):
    message = await refused(f"{server}/probe", hosts=("probes.example",))
    assert "'127.0.0.1' is not one this server allows (--probe-host)" in message
    assert await fetch(f"{server}/probe", hosts=("127.0.0.1",)) == PAYLOAD


async def test_health_answers_while_a_probe_trickles_in(server):
    """The download runs on the event loop without blocking it."""
    app = build_admin_app(_Idle(), AdminToken("t"), ProbeSources(deadline=5))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=10) as http:
        body = {"probe": {"url": f"{server}/trickle", "sha256": SHA}}
        put = asyncio.create_task(
            http.put("http://admin/trail/v1/config", json=body, headers={"Authorization": "Bearer t"})
        )
        await asyncio.sleep(0.3)
        assert not put.done()
        started = time.monotonic()
        assert (await http.get("http://admin/health")).status_code == 200
        assert time.monotonic() - started < 0.2
        reply = await put
    assert reply.status_code == 422  # the trickle stops short of its Content-Length


class _Idle:
    """An engine the trickle test never reaches."""

    engine_core = None


# -- file:// ------------------------------------------------------------------------


@pytest.fixture
def probe_dir(tmp_path):
    allowed = tmp_path / "probes"
    allowed.mkdir()
    (allowed / "p.safetensors").write_bytes(PAYLOAD)
    (tmp_path / "secret").write_bytes(b"outside")
    (allowed / "link-out").symlink_to(tmp_path / "secret")
    (allowed / "link-in").symlink_to(allowed / "p.safetensors")
    (allowed / "sub").mkdir()
    return allowed


async def test_file_probes_are_off_without_a_probe_dir(probe_dir):
    message = await refused(f"file://{probe_dir}/p.safetensors")
    assert "start trail serve with --probe-dir DIR" in message


async def test_files_under_the_probe_dir_are_read(probe_dir):
    assert await fetch(f"file://{probe_dir}/p.safetensors", dirs=(probe_dir,)) == PAYLOAD
    assert await fetch(f"file://{probe_dir}/link-in", dirs=(probe_dir,)) == PAYLOAD
    assert await fetch(f"file://{probe_dir}/sub/../p%2Esafetensors", dirs=(probe_dir,)) == PAYLOAD


@pytest.mark.parametrize(
    "path",
    ["../secret", "link-out", "../../../etc/passwd", "../does-not-exist", "sub/../../secret", "%2E%2E/secret"],
)
async def test_nothing_outside_the_probe_dir_and_no_hint_whether_it_exists(probe_dir, path):
    message = await refused(f"file://{probe_dir}/{path}", dirs=(probe_dir,))
    assert message == "probe.url is outside the probe directories this server allows (--probe-dir)"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("absent.safetensors", "probe.url: no such file in the allowed probe directories"),
        ("sub", "probe.url is not a regular file"),
        ("p.safetensors%00x", "probe.url: the path holds a NUL byte"),
    ],
)
async def test_files_that_cannot_be_used_say_so_without_os_errors(probe_dir, path, message):
    assert await refused(f"file://{probe_dir}/{path}", dirs=(probe_dir,)) == message


async def test_inline_data_is_checked_against_its_sha256():
    sources = ProbeSources()
    data = base64.b64encode(PAYLOAD).decode()
    assert await sources.fetch(ProbeSource(data=data, sha256=SHA)) == PAYLOAD
    with pytest.raises(ProbeFetchError, match="over the 10-byte limit"):
        await ProbeSources(max_bytes=10).fetch(ProbeSource(data=data))
