"""`eve-operator`: run the EvePipeline operator (kopf, standalone: one replica, no peering).

    eve-operator --all-namespaces --metrics-port 8080 --health-port 8081
    eve-operator --namespace team-a --namespace team-b
"""

from __future__ import annotations

import argparse

from eve_operator.settings import Config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eve-operator", description=__doc__.split("\n")[0])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    defaults = Config.from_env()  # EVE_OPERATOR_* where set, else the one set of defaults
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port,
                        help="serve Prometheus /metrics here (0: off)")
    parser.add_argument("--health-port", type=int, default=8081, help="serve /healthz here (0: off)")
    parser.add_argument("--resync-seconds", type=float, default=defaults.resync_s,
                        help="safety-net reconcile period per pipeline (S3 manifests send no events)")
    parser.add_argument("--verify", choices=("deep", "size"), default="deep" if defaults.deep_verify else "size",
                        help="stage-complete check: re-hash every export file, or compare sizes only")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        parser.error("name the namespaces to watch: --namespace NS (repeatable) or --all-namespaces")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import kopf

    from eve_operator import handlers  # declares the handlers

    handlers.configure(Config(resync_s=args.resync_seconds, metrics_port=args.metrics_port,
                                       deep_verify=args.verify == "deep"))
    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True,
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
