"""Fetching a new probe's bytes for the admin API: inline, from an allowed directory, or over HTTP.

Whoever holds the admin token (or edits an ``LLMServer``) names the source, so the pod
treats it as hostile: ``file://`` only under ``--probe-dir`` directories (after resolving
symlinks and ``..``), ``http(s)://`` only from ``--probe-host`` hosts when any are given and
never from link-local or cloud-metadata addresses (checked on the resolved addresses of
every redirect hop, and the connection goes to the address checked), the download
streamed on the event loop without blocking it, under a deadline and a size cap, never
decompressed. Errors say what to fix without echoing OS errors, files outside the allowed
directories or the digest of what was read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from trail_contract.admin_api import ProbeSource
from trail_contract.errors import TrailError

logger = logging.getLogger("trail.probe_source")

MAX_PROBE_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 3
DEFAULT_DEADLINE_SECONDS = 60.0
# Cloud metadata services: never a probe source, whatever --probe-host says.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)

Resolver = Callable[[str, int], Awaitable[list[str]]]


class ProbeFetchError(TrailError):
    """A probe source that cannot be used; the message says why without leaking what was read."""


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (off the event loop, as asyncio's resolver is)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


@dataclass(frozen=True)
class ProbeSources:
    """Where probes may come from: ``trail serve --probe-dir/--probe-host/--probe-deadline``."""

    dirs: tuple[Path, ...] = ()  # file:// only under these (resolved); none: file:// refused
    hosts: tuple[str, ...] = ()  # http(s):// only from these hostnames; none: any host
    deadline: float = DEFAULT_DEADLINE_SECONDS
    max_bytes: int = MAX_PROBE_BYTES
    resolver: Resolver = field(default=resolve, repr=False)

    @classmethod
    def from_flags(cls, dirs: list[str] | None, hosts: list[str] | None, deadline: float) -> ProbeSources:
        return cls(
            dirs=tuple(Path(d).resolve() for d in dirs or ()),
            hosts=tuple(h.lower().rstrip(".") for h in hosts or ()),
            deadline=deadline,
        )

    async def fetch(self, source: ProbeSource) -> bytes:
        """The probe file's bytes, checked against ``source.sha256`` when given."""
        if source.data is not None:
            try:
                payload = base64.b64decode(source.data, validate=True)
            except (binascii.Error, ValueError):
                raise ProbeFetchError("probe.data is not valid base64") from None
        else:
            try:
                async with asyncio.timeout(self.deadline):
                    if source.url.startswith("file:"):
                        payload = await asyncio.to_thread(self._read_file, source.url)
                    else:
                        payload = await self._download(source.url)
            except TimeoutError:
                raise ProbeFetchError(f"probe download took longer than {self.deadline:g} s") from None
        if len(payload) > self.max_bytes:
            raise ProbeFetchError(f"probe file is over the {self.max_bytes}-byte limit")
        if source.sha256 is not None and hashlib.sha256(payload).hexdigest() != source.sha256:
            raise ProbeFetchError("the probe's sha256 does not match probe.sha256")
        return payload

    # -- file:// -------------------------------------------------------------------

    def _read_file(self, url: str) -> bytes:
        if not self.dirs:
            raise ProbeFetchError(
                "file:// probes are turned off: start trail serve with --probe-dir DIR to allow files under DIR"
            )
        raw = unquote(urlsplit(url).path)
        if "\0" in raw:
            raise ProbeFetchError("probe.url: the path holds a NUL byte")
        path = Path(os.path.realpath(raw))  # symlinks and .. resolved before the check
        if not any(path.is_relative_to(allowed) for allowed in self.dirs):
            raise ProbeFetchError("probe.url is outside the probe directories this server allows (--probe-dir)")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise ProbeFetchError("probe.url: no such file in the allowed probe directories") from None
        except OSError:
            raise ProbeFetchError("probe.url: cannot open that file") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ProbeFetchError("probe.url is not a regular file")
        with os.fdopen(fd, "rb") as handle:
            try:
                payload = handle.read(self.max_bytes + 1)
            except OSError:
                raise ProbeFetchError("probe.url: cannot read that file") from None
        return payload

    # -- http(s):// ------------------------------------------------------------------

    async def _download(self, url: str) -> bytes:
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=self.deadline) as client:
            for _ in range(MAX_REDIRECTS + 1):
                parts = urlsplit(url)
                host = parts.hostname or ""
                port = parts.port or (443 if parts.scheme == "https" else 80)
                address = await self._checked_address(host, port)
                target = parts._replace(netloc=f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
                request = client.build_request(
                    "GET",
                    target.geturl(),
                    headers={"Host": parts.netloc.rpartition("@")[2], "Accept-Encoding": "identity"},
                    extensions={"sni_hostname": host},
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx.HTTPError as error:
                    raise ProbeFetchError(f"cannot download the probe from {host}: {type(error).__name__}") from None
                try:
                    if response.is_redirect:
                        url = self._next_hop(url, response.headers.get("location", ""))
                        continue
                    return await self._body(host, response)
                finally:
                    await response.aclose()
        raise ProbeFetchError(f"probe download redirected more than {MAX_REDIRECTS} times")

    async def _checked_address(self, host: str, port: int) -> str:
        """The address to connect to, once every address ``host`` resolves to is allowed."""
        if self.hosts and host.rstrip(".") not in self.hosts:
            raise ProbeFetchError(f"probe host {host!r} is not one this server allows (--probe-host)")
        if host.rstrip(".") in METADATA_HOSTS:
            raise ProbeFetchError(f"probe host {host!r} is a cloud metadata service")
        try:
            addresses = [ipaddress.ip_address(a.partition("%")[0]) for a in await self.resolver(host, port)]
        except (OSError, UnicodeError, ValueError):
            raise ProbeFetchError(f"cannot resolve probe host {host!r}") from None
        if not addresses:
            raise ProbeFetchError(f"cannot resolve probe host {host!r}")
        for address in addresses:
            plain = getattr(address, "ipv4_mapped", None) or address
            if plain.is_link_local or plain in METADATA_ADDRESSES:
                raise ProbeFetchError(f"probe host {host!r} resolves to a link-local or cloud metadata address")
        return str(addresses[0])

    @staticmethod
    def _next_hop(url: str, location: str) -> str:
        """The redirect's target, held to the same rules as a probe.url given in a request."""
        target = urljoin(url, location)
        try:
            ProbeSource(url=target, sha256="0" * 64)
        except ValueError:
            raise ProbeFetchError("probe download redirected to an invalid URL") from None
        if not target.startswith(("http://", "https://")):
            raise ProbeFetchError("probe download redirected away from http(s)")
        return target

    async def _body(self, host: str, response: httpx.Response) -> bytes:
        if response.status_code != 200:
            raise ProbeFetchError(f"probe download from {host} answered HTTP {response.status_code}")
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise ProbeFetchError("probe download came compressed; serve it uncompressed")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise ProbeFetchError(f"probe file is over the {self.max_bytes}-byte limit")
        chunks, size = [], 0
        try:
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.max_bytes:
                    raise ProbeFetchError(f"probe file is over the {self.max_bytes}-byte limit")
                chunks.append(chunk)
        except httpx.HTTPError as error:
            raise ProbeFetchError(f"cannot download the probe from {host}: {type(error).__name__}") from None
        return b"".join(chunks)
