"""``python -m devstack``: the local stack (``local up|down|status``) and the demo, for development only.

Exit codes as the ``pgfanout`` command's, and 4 for a local stack problem.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from devstack import tls
from devstack.demo import run_demo
from devstack.stack import Stack
from pgfanout.core.errors import PgfanoutError


def cmd_local_up(args: argparse.Namespace) -> int:
    stack = Stack.load()
    stack.up(kafka_clusters=args.kafka_clusters, secure=args.secure)
    print("\n".join(stack.status_lines()))
    return 0


def cmd_local_down(args: argparse.Namespace) -> int:
    Stack.load().down(purge=args.purge)
    print("local stack stopped" + (" and its data removed" if args.purge else " (data kept; --purge removes it)"))
    return 0


def cmd_local_env(args: argparse.Namespace) -> int:
    """Shell lines that export the secured stack's passwords from their files (the secrets are not printed)."""
    credentials = Stack.load().credentials
    if credentials is None:
        print("# the local stack is not secured (local up --secure): its servers take no password")
        return 0
    print(f'export {tls.KAFKA_PASSWORD_ENV}="$(cat {credentials.kafka_password_file})"')
    print(f'export {tls.PG_PASSWORD_ENV}="$(cat {credentials.postgres_password_file})"')
    return 0


def cmd_local_status(args: argparse.Namespace) -> int:
    print("\n".join(Stack.load().status_lines()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(seconds=args.seconds, writers=args.writers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="The development stack and the demo; the state directory is $PGFANOUT_HOME or .pgfanout.",
    )
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    local = top.add_parser("local", help="the local stack: PostgreSQL clusters and Kafka, no Docker").add_subparsers(
        dest="action", required=True
    )
    up = local.add_parser("up", help="start (creating if needed) the local stack; idempotent")
    up.add_argument(
        "--kafka-clusters",
        type=int,
        choices=[1, 2],
        default=1,
        help="2 starts a second, independent Kafka cluster for tier tests",
    )
    up.add_argument(
        "--secure",
        action="store_true",
        help="Kafka with SASL/SCRAM-SHA-512 over TLS, PostgreSQL with TLS and scram-sha-256, certificates made for the "
        "stack (docs/security.md); only when the stack is first made",
    )
    up.set_defaults(func=cmd_local_up)
    down = local.add_parser("down", help="stop what the local stack started")
    down.add_argument("--purge", action="store_true", help="also delete the stack's data")
    down.set_defaults(func=cmd_local_down)
    local.add_parser("status", help="show what runs where").set_defaults(func=cmd_local_status)
    local.add_parser("env", help="shell lines exporting the secured stack's passwords (eval them)").set_defaults(
        func=cmd_local_env
    )
    demo = top.add_parser("demo", help="run the end-to-end demo on the local stack")
    demo.add_argument("--seconds", type=float, default=10.0, help="how long the workload runs")
    demo.add_argument("--writers", type=int, default=4, help="concurrent writer connections")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except PgfanoutError as exc:
        print(f"devstack: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
