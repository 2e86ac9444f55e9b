"""``trail serve``: vLLM's OpenAI-compatible server with TRAIL in the engine.

TRAIL's own flags are parsed here; everything else goes to vLLM's argument parser
untouched, after TRAIL's defaults (scheduler and worker classes, priority queues,
the bundled model and CPU-friendly settings) for whatever the user did not set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import tempfile
import typing
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from trail_contract.admin_api import read_settings_file
from trail_contract.errors import TrailError
from trail_contract.settings import CHOICE_SETTINGS, SchedulerSettings
from trail_contract.wire import explain
from trail_scheduler.server.probe_source import DEFAULT_DEADLINE_SECONDS, ProbeFetchError, ProbeSources
from trail_scheduler.vllm.engine_config import TRAIL_ENGINE_ARGS, TrailEngineConfig, engine_args

if TYPE_CHECKING:
    from trail_scheduler.server.admin import AdminToken

logger = logging.getLogger("trail.serve")
ADMIN_CONNECTIONS = 16  # connections and requests the admin port serves at once


class ServeError(TrailError):
    """A ``trail serve`` flag or file that cannot be used."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model id or path (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--port", type=int, default=8000, help="OpenAI API port")
    parser.add_argument("--admin-port", type=int, default=8001, help="admin API port (never expose it)")
    parser.add_argument(
        "--admin-token-file",
        help="file holding the admin bearer token, read again when it changes (or TRAIL_ADMIN_TOKEN)",
    )
    _add_settings_flags(parser)
    parser.add_argument(
        "--probe", help="probe file (.safetensors), or 'none' (default with the bundled model: the shipped one)"
    )
    parser.add_argument("--probe-layer", type=int, help="decoder layer to capture when no probe names one")
    parser.add_argument(
        "--probe-dir",
        action="append",
        help="a directory file:// probes may come from (repeatable; none: file:// probes are refused)",
    )
    parser.add_argument(
        "--probe-host",
        action="append",
        help="a host http(s):// probes may come from (repeatable, exact hostname; none: any host)",
    )
    parser.add_argument(
        "--probe-deadline",
        type=float,
        default=DEFAULT_DEADLINE_SECONDS,
        help="seconds a probe download may take in all",
    )
    parser.add_argument(
        "--prompt-predictor",
        help="prompt-predictor file estimating each request's length on arrival, or 'none' "
        "(default with the bundled model: the shipped one)",
    )
    parser.add_argument(
        "--scheduler-config", help="JSON/YAML file with the admin API's settings fields (how pods read their ConfigMap)"
    )
    parser.add_argument(
        "--accept-client-hints",
        action="store_true",
        help="let clients set TRAIL's scheduling hints (vllm_xargs trail_*: a length estimate, the true length); "
        "for benchmarks only: a client could jump the queue with them",
    )


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per scheduler setting, named, typed and described by the settings model."""
    for name, info in SchedulerSettings.model_fields.items():
        kind = next((t for t in typing.get_args(info.annotation) if t is not type(None)), info.annotation)
        flag = "--" + name.replace("_", "-")
        if name in CHOICE_SETTINGS:
            parser.add_argument(flag, choices=[c.value for c in CHOICE_SETTINGS[name]], help=info.description)
        elif kind is bool:
            parser.add_argument(flag, type=_true_or_false, metavar="{true,false}", help=info.description)
        else:
            parser.add_argument(flag, type=kind, help=info.description)


def _true_or_false(text: str) -> bool:
    """A switch's flag value, spelled as in the settings file and the CRD."""
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text == "true"


def scheduler_settings(args: argparse.Namespace) -> tuple[SchedulerSettings, str | None, int]:
    """Settings from the config file, then explicit flags; the probe path; the generation."""
    settings = SchedulerSettings()
    no_probe = args.probe == "none"
    probe_path, generation = (None if no_probe else args.probe), 0
    if args.scheduler_config:
        try:
            update = read_settings_file(Path(args.scheduler_config).read_text())
        except ValidationError as error:
            raise ServeError(f"invalid --scheduler-config {args.scheduler_config}: {explain(error)}") from None
        except (OSError, ValueError) as error:
            raise ServeError(f"invalid --scheduler-config {args.scheduler_config}: {error}") from None
        settings = update.applied_to(settings)
        generation = update.generation or 0
        if update.probe is not None and probe_path is None and not no_probe:
            try:
                payload = asyncio.run(probe_sources(args).fetch(update.probe))
            except ProbeFetchError as error:
                raise ServeError(f"probe in {args.scheduler_config}: {error}") from None
            handle = tempfile.NamedTemporaryFile(prefix="trail-probe-", suffix=".safetensors", delete=False)
            handle.write(payload)
            handle.close()
            probe_path = handle.name
    flags = {name: getattr(args, name) for name in SchedulerSettings.model_fields if getattr(args, name) is not None}
    try:
        settings = SchedulerSettings.model_validate({**settings.model_dump(), **flags})
    except ValidationError as error:
        raise ServeError(explain(error, "--")) from None
    if probe_path is None and not no_probe and args.model is None and args.probe_layer is None:
        probe_path = _shipped("SHIPPED_PROBE")  # trained for the bundled model
    return settings, probe_path, generation


def _shipped(name: str) -> str | None:
    from trail_scheduler import predictors

    path = getattr(predictors, name)
    return str(path) if path.exists() else None


def load_prompt_predictor_arg(args: argparse.Namespace):
    """The prompt predictor to run on arrival (None: requests carry no prompt estimate)."""
    path = args.prompt_predictor
    if path is None and args.model is None:
        path = _shipped("SHIPPED_PROMPT_PREDICTOR")
    if path is None or path == "none":
        return None
    from trail_scheduler.probe import ProbeFileError
    from trail_scheduler.probe.prompt import load_prompt_predictor

    try:
        predictor = load_prompt_predictor(path)
    except ProbeFileError as error:
        raise ServeError(f"--prompt-predictor: {error}") from None
    predictor.estimate_one("warm-up")  # load the encoder now, not on the first request
    return predictor


def attach_request_hints(engine, predictor, accept_client_hints: bool = False) -> None:
    """Wrap the engine client's ``generate``, which every OpenAI endpoint calls with the rendered
    prompt (token ids, and the text when known), to control TRAIL's per-request hints
    (``sampling_params.extra_args["trail_*"]``, which the scheduler trusts).

    A client's own ``trail_*`` values (``vllm_xargs``) are dropped unless the server accepts
    client hints (benchmarks), so no client can make its request look short and jump the
    queue. With a prompt predictor, each request's length is estimated on arrival, off the
    event loop, and sent as ``trail_prompt_estimate`` with the distribution it is the mean of
    (``trail_prompt_distribution``, the refinement's prior); an estimate a trusted client gave
    is kept, without a distribution.
    """
    from concurrent.futures import ThreadPoolExecutor

    from trail_scheduler.vllm.hints import HINT_PREFIX, PROMPT_DISTRIBUTION_ARG, PROMPT_ESTIMATE_ARG

    executor = None if predictor is None else ThreadPoolExecutor(1, thread_name_prefix="trail-prompt-predictor")
    edges = None if predictor is None else predictor.bins.to_list()
    original = engine.generate

    def prompt_text(prompt) -> str | None:
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, dict):
            if isinstance(prompt.get("prompt"), str):
                return prompt["prompt"]
            if prompt.get("prompt_token_ids") is not None and engine.tokenizer is not None:
                return engine.tokenizer.decode(prompt["prompt_token_ids"])
        return None

    async def generate(prompt, sampling_params, request_id, *args, **kwargs):
        if hasattr(sampling_params, "extra_args"):
            extra = dict(sampling_params.extra_args or {})
            if not accept_client_hints:
                extra = {key: value for key, value in extra.items() if not key.startswith(HINT_PREFIX)}
            if predictor is not None and PROMPT_ESTIMATE_ARG not in extra:
                text = prompt_text(prompt)
                if text is not None:
                    loop = asyncio.get_running_loop()
                    estimate, probabilities = await loop.run_in_executor(executor, predictor.predict_one, text)
                    extra[PROMPT_ESTIMATE_ARG] = estimate
                    extra[PROMPT_DISTRIBUTION_ARG] = {"edges": edges, "probabilities": probabilities}
            sampling_params.extra_args = extra or None
        async for output in original(prompt, sampling_params, request_id, *args, **kwargs):
            yield output

    engine.generate = generate


def probe_sources(args: argparse.Namespace) -> ProbeSources:
    if not args.probe_deadline > 0:
        raise ServeError(f"--probe-deadline must be a positive number of seconds, got {args.probe_deadline}")
    return ProbeSources.from_flags(args.probe_dir, args.probe_host, args.probe_deadline)


def admin_token(args: argparse.Namespace) -> AdminToken:
    """The token file (read again when it changes; empty or unreadable: no request gets in),
    else ``TRAIL_ADMIN_TOKEN``, else a generated token written to a file for hand runs."""
    from trail_scheduler.server.admin import AdminToken

    if args.admin_token_file:
        token = AdminToken(path=args.admin_token_file)
        if token.current() is None:
            logger.warning(
                "admin token file %s is empty or unreadable: the admin API refuses all", args.admin_token_file
            )
        return token
    value = os.environ.get("TRAIL_ADMIN_TOKEN", "").strip()
    if not value:
        value = secrets.token_urlsafe(24)
        path = Path(tempfile.gettempdir()) / f"trail-admin-token-{args.admin_port}"
        path.write_text(value)
        path.chmod(0o600)
        logger.warning("no admin token given: generated one in %s", path)
    return AdminToken(value)


def _has_flag(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def vllm_argv(model: str | None, port: int, user_argv: list[str], engine_config: TrailEngineConfig | None) -> list[str]:
    """vLLM's server arguments: the user's, plus the engine's defaults for what they left
    unset, plus TRAIL's own (``engine_config`` None: stock vLLM's)."""
    reserved = {name: _flag(name) for name in TRAIL_ENGINE_ARGS}
    for flag in reserved.values():
        if _has_flag(user_argv, flag):
            raise ServeError(f"trail serve sets {flag} itself")
    defaults, trail = [], []
    for name, value in engine_args(model, engine_config).items():
        if name in reserved:
            trail += _as_argv(name, value)
        elif name == "model" or not _has_flag(user_argv, _flag(name)):
            defaults += _as_argv(name, value)
    return [*defaults, "--port", str(port), *user_argv, *trail]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _as_argv(name: str, value) -> list[str]:
    if value is True:
        return [_flag(name)]
    return [_flag(name), json.dumps(value) if isinstance(value, dict) else str(value)]


def _admin_server(app, host: str, port: int):
    """A uvicorn server for the admin app that leaves signal handling to vLLM's server; it
    holds a few connections at most (more get 503), so the admin port cannot eat the
    event loop the OpenAI API shares."""
    import uvicorn

    class QuietServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        limit_concurrency=ADMIN_CONNECTIONS,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,  # request line and headers
    )
    return QuietServer(config)


async def _run(
    vllm_args: argparse.Namespace,
    token: AdminToken,
    sources: ProbeSources,
    admin_port: int,
    prompt_predictor=None,
    accept_client_hints: bool = False,
) -> None:
    from vllm.entrypoints.launchers.api_server.entry import build_and_serve, build_async_engine_client
    from vllm.entrypoints.launchers.launcher import setup_server

    from trail_scheduler.server.admin import build_admin_app
    from trail_scheduler.server.metrics import poll_engine

    listen_address, sock = setup_server(vllm_args, reuse_port=False)
    async with build_async_engine_client(vllm_args) as engine:
        attach_request_hints(engine, prompt_predictor, accept_client_hints)
        admin = _admin_server(build_admin_app(engine, token, sources), vllm_args.host or "0.0.0.0", admin_port)
        admin_task = asyncio.create_task(admin.serve())
        poller = asyncio.create_task(poll_engine(engine))
        logger.info("TRAIL admin API on port %d", admin_port)
        try:
            shutdown = await build_and_serve(engine, listen_address, sock, vllm_args)
        finally:
            poller.cancel()
            admin.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await admin_task
    try:
        await shutdown
    finally:
        sock.close()


def run(args: argparse.Namespace) -> int:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings, probe_path, generation = scheduler_settings(args)
    if probe_path is not None:
        from trail_scheduler.probe import load_probe

        load_probe(probe_path)  # a bad file stops here, before the engine starts
    engine_config = TrailEngineConfig(
        settings=settings, probe_path=probe_path, probe_layer=args.probe_layer, generation=generation
    )
    prompt_predictor = load_prompt_predictor_arg(args)
    token = admin_token(args)
    sources = probe_sources(args)
    cli_env_setup()
    # No abbreviations: `--sched=` must not reach a flag trail serve sets itself.
    parser = make_arg_parser(FlexibleArgumentParser(prog="trail serve", allow_abbrev=False))
    vllm_args = parser.parse_args(vllm_argv(args.model, args.port, args.extra_args, engine_config))
    validate_parsed_serve_args(vllm_args)
    logger.info(
        "TRAIL %s (c=%s, predict every %d) on %s",
        settings.policy.value,
        settings.c,
        settings.predict_every,
        vllm_args.model,
    )
    import uvloop

    if prompt_predictor is not None:
        logger.info(
            "prompt predictor %s (sha256 %s)", args.prompt_predictor or "shipped", prompt_predictor.loaded.sha256[:12]
        )
    if args.accept_client_hints:
        logger.warning("clients may set TRAIL's scheduling hints (--accept-client-hints): for benchmarks only")
    uvloop.run(_run(vllm_args, token, sources, args.admin_port, prompt_predictor, args.accept_client_hints))
    return 0
