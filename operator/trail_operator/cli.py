"""``trail operator run``: the kopf operator for LLMServer resources."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    operator = sub.add_parser("operator", help="the Kubernetes operator for LLMServer resources")
    operator_sub = operator.add_subparsers(dest="operator_command", required=True)
    run = operator_sub.add_parser("run", help="run the operator (all namespaces unless --namespace is given)")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; globs allowed); default: all namespaces",
    )
    run.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL (empty to disable)"
    )
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    import kopf

    import trail_operator.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,  # empty with clusterwide (kopf refuses None)
            standalone=True,
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0
