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
    run.add_argument(
        "--peering",
        default="",
        metavar="NAME",
        help="one of several replicas: those with the same NAME let one act (kopf peering; the chart passes it); "
        "default: standalone, a single replica",
    )
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    import kopf

    import trail_operator.handlers  # noqa: F401  (registers the handlers)
    from trail_operator.peering import Peering

    if args.peering and any(set("*?[") & set(namespace) for namespace in args.namespace):
        raise SystemExit("--peering needs exact --namespace names (a peering object lives in each), not globs")
    peering = Peering.join(args.peering, tuple(args.namespace)) if args.peering else None
    kopf.configure(verbose=args.verbose)
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,  # empty with clusterwide (kopf refuses None)
            standalone=peering is None,
            peering_name=peering.name if peering else None,
            identity=peering.identity if peering else None,
            priority=peering.priority if peering else None,
            liveness_endpoint=args.liveness or None,
            memo=kopf.Memo(peering=peering),
        )
    )
    return 0
