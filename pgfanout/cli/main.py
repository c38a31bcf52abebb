"""The ``pgfanout`` command. Every error becomes one message and an exit code, never a traceback.

Exit codes: 0 ok, 1 failure, 2 bad configuration or usage, 3 fatal stream error,
75 a server could not be reached (try again later).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pgfanout import __version__
from pgfanout.cli import logs
from pgfanout.core.config import Config, Serves, load_config
from pgfanout.core.errors import ConfigError, NameSyntaxError, PgfanoutError
from pgfanout.core.names import canonical_table

log = logging.getLogger("pgfanout")
DEFAULT_CONFIG = os.environ.get("PGFANOUT_CONFIG", "pgfanout.yaml")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _pick(kind: str, names: Sequence[str], chosen: str | None) -> str:
    if chosen is not None:
        if chosen not in names:
            raise ConfigError("command line", [f"no {kind} named {chosen!r} (defined: {', '.join(names) or 'none'})"])
        return chosen
    if len(names) == 1:
        return names[0]
    raise ConfigError("command line", [f"name the {kind} to use, one of: {', '.join(names) or 'none'}"])


def _run_daemon(worker: Any, serves: Serves) -> int:
    from pgfanout.runtime import daemon, metrics

    stop = threading.Event()
    daemon.install_signal_handlers(stop)
    logs.name_daemon(worker.name)
    health = metrics.Health(worker.name)
    if serves.metrics_port is not None:
        try:
            metrics.serve(serves.metrics_address, serves.metrics_port, health)
        except OSError as exc:
            raise ConfigError(
                "configuration",
                [f"{worker.name}: cannot serve metrics on {serves.metrics_address}:{serves.metrics_port}: {exc.strerror}"],
            ) from None
    return daemon.run(worker, stop, health)


# -- commands ------------------------------------------------------------------------


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(
        f"{args.file}: ok ({len(config.sources)} sources, {len(config.routes)} routes, "
        f"{len(config.distributors)} distributors, {len(config.subscribers)} subscribers)"
    )
    return 0


def cmd_agent_install(args: argparse.Namespace) -> int:
    from agent import capture
    from pgfanout.runtime.pg import connect

    config = _config(args)
    name = _pick("source", list(config.sources), args.source)
    source = config.sources[name]
    with connect(source, "pgfanout-install") as conn:
        if args.dry_run:
            print(capture.render(conn, capture.plan_install(conn, source, config.subscriptions_of(name))), end="")
            return 0
        notes = capture.install(conn, source, config.subscriptions_of(name))
    print(f"capture installed on source {name}: {', '.join(source.tables)}")
    for note in notes:
        print(f"  {note}")
    return 0


def cmd_agent_faults(args: argparse.Namespace) -> int:
    from agent import faults
    from pgfanout.runtime.pg import connect

    config = _config(args)
    name = _pick("source", list(config.sources), args.source)
    with connect(config.sources[name], "pgfanout-faults") as conn:
        found = faults.accept(conn) if args.accept else faults.listing(conn)
    if not found:
        print(f"source {name}: no capture faults")
        return 0
    for fault in found:
        print(f"transaction {fault.txid}: {fault.relation}: {fault.reason}")
    tables = sorted({f.relation for f in found})
    if args.accept:
        print(
            f"accepted: the agent publishes those transactions without the changes capture could not record; "
            f"copy {', '.join(tables)} again on every subscriber (pgfanout subscriber resync NAME --table TABLE)"
        )
        return 0
    print(
        f"the agent stops before these transactions; after repairing capture, run "
        f"`pgfanout agent faults --source {name} --accept`"
    )
    return 1


def cmd_agent_uninstall(args: argparse.Namespace) -> int:
    from agent import capture
    from pgfanout.runtime.pg import connect

    config = _config(args)
    name = _pick("source", list(config.sources), args.source)
    with connect(config.sources[name], "pgfanout-uninstall") as conn:
        capture.uninstall(conn)
    print(f"capture removed from source {name}; user tables and data are untouched")
    return 0


def cmd_agent_run(args: argparse.Namespace) -> int:
    from agent.agent import Agent
    from pgfanout.runtime.daemon import lower_priority

    config = _config(args)
    source = _pick("source", list(config.sources), args.source)
    lower_priority(config.sources[source].agent_nice)  # sharing a host with the primary, the application comes first
    return _run_daemon(Agent(config, source), config.sources[source])


def cmd_distributor_run(args: argparse.Namespace) -> int:
    from distributor.distributor import Distributor

    config = _config(args)
    name = _pick("distributor", list(config.distributors), args.name)
    return _run_daemon(Distributor(config, name), config.distributors[name])


def cmd_subscriber_run(args: argparse.Namespace) -> int:
    from subscriber.subscriber import Subscriber

    config = _config(args)
    name = _pick("subscriber", list(config.subscribers), args.name)
    return _run_daemon(Subscriber(config, name), config.subscribers[name])


def cmd_subscriber_skip(args: argparse.Namespace) -> int:
    from pgfanout.runtime.pg import connect
    from subscriber.state import request_skip

    config = _config(args)
    name = _pick("subscriber", list(config.subscribers), args.name)
    with connect(config.subscribers[name], "pgfanout-skip") as conn:
        applied = request_skip(conn, name, args.position)
    print(
        f"subscriber {name} (at position {applied}) will skip the transaction at position {args.position} when it "
        "reaches it; that replica will then differ from the source by that transaction (resync it to be exact)"
    )
    return 0


def cmd_subscriber_init(args: argparse.Namespace) -> int:
    from subscriber.materialize import Materializer

    config = _config(args)
    name = _pick("subscriber", list(config.subscribers), args.name)
    position = Materializer(config, name, copy_from=args.copy_from).init(restart=args.restart)
    print(f"subscriber {name} materialized; `pgfanout subscriber run {name}` continues the stream after position {position}")
    return 0


def cmd_subscriber_resync(args: argparse.Namespace) -> int:
    from subscriber.materialize import Materializer

    config = _config(args)
    name = _pick("subscriber", list(config.subscribers), args.name)
    materializer = Materializer(config, name, copy_from=args.copy_from)
    if args.table:
        position = materializer.resync_table(args.table)
        print(f"table {args.table} of subscriber {name} copied again at position {position}")
    else:
        position = materializer.resync()
        print(f"subscriber {name} copied again; the stream continues after position {position}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from distributor.export import export

    config = _config(args)
    if args.route not in config.routes and args.route not in config.sources:
        raise ConfigError(
            args.config, [f"--route: no route or source named {args.route!r} (routes: {', '.join(config.routes) or 'none'})"]
        )
    print(export(config, args.route, args.from_position, Path(args.to)))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from subscriber.importer import import_file

    config = _config(args)
    name = _pick("subscriber", list(config.subscribers), args.subscriber)
    print(import_file(config, name, Path(args.file)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import time

    from pgfanout.cli import status

    config = _config(args)
    while True:
        trees = status.gather(config)
        if args.json:
            print(json.dumps(status.as_json(trees), indent=2))
        else:
            if args.watch:
                print("\x1b[2J\x1b[H", end="")  # the terminal cleared, the tree drawn in place
            print("\n".join(status.lines(trees)))
        if not args.watch:
            return 0 if status.reachable(trees) else 1
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def cmd_web(args: argparse.Namespace) -> int:
    from pgfanout.cli.web import serve

    return serve(_config(args), args.address, args.port, args.interval)


def cmd_trace(args: argparse.Namespace) -> int:
    from pgfanout.cli.tracing import trace

    config = _config(args)
    return trace(config, _pick("source", list(config.sources), args.source), args.wait)


def cmd_ddl(args: argparse.Namespace) -> int:
    from pgfanout.cli.ddlscript import run

    config = _config(args)
    return run(config, _pick("source", list(config.sources), args.source), Path(args.script))


def cmd_switchover(args: argparse.Namespace) -> int:
    from pgfanout.cli.primaryrole import switchover

    config = _config(args)
    return switchover(config, _pick("source", list(config.sources), args.source), args.to, args.timeout)


def cmd_failover(args: argparse.Namespace) -> int:
    from pgfanout.cli.primaryrole import failover

    config = _config(args)
    return failover(config, _pick("source", list(config.sources), args.source), args.to, args.wait)


def cmd_roles(args: argparse.Namespace) -> int:
    from pgfanout.cli import roles

    return roles.run(_config(args), args.source, args.subscriber, args.role)


def cmd_compare(args: argparse.Namespace) -> int:
    from pgfanout.cli import verify

    config = _config(args)
    return verify.run(config, args.subscriber, args.table, args.timeout, args.examples, args.json, args.repair, args.pace)


def cmd_repair(args: argparse.Namespace) -> int:
    from pgfanout.cli import verify

    config = _config(args)
    return verify.run(config, args.subscriber, args.table, args.timeout, args.examples, args.json, True, args.pace)


# -- parser ----------------------------------------------------------------------------


def _add(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], help_text: str, config: bool = True
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    if config:
        parser.add_argument(
            "--config", "-c", default=DEFAULT_CONFIG, help="the YAML configuration (default: $PGFANOUT_CONFIG or pgfanout.yaml)"
        )
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgfanout", description="Publish/distribute replication for PostgreSQL over Kafka.")
    parser.add_argument("--version", action="version", version=f"pgfanout {__version__}")
    parser.add_argument(
        "--log-level", default=os.environ.get("PGFANOUT_LOG_LEVEL", "INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("PGFANOUT_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="text lines, or one JSON object a line (time, level, daemon, message, and position/topic/offset)",
    )
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = top.add_parser("config", help="check a configuration file").add_subparsers(dest="action", required=True)
    check = _add(config, "check", cmd_config_check, "validate a configuration file without connecting", config=False)
    check.add_argument("file")

    agent = top.add_parser("agent", help="capture on the primary and publication to Kafka").add_subparsers(
        dest="action", required=True
    )
    for name, func, text in (
        ("install", cmd_agent_install, "install capture (schema, log, triggers) on the primary"),
        ("uninstall", cmd_agent_uninstall, "remove capture; user tables stay untouched"),
        ("run", cmd_agent_run, "run the agent daemon"),
        (
            "faults",
            cmd_agent_faults,
            "list the changes capture could not record, which stop the agent (exit status 1 when there are any)",
        ),
    ):
        p = _add(agent, name, func, text)
        p.add_argument("--source", help="the source to act on (default: the only one)")
        if name == "install":
            p.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")
        if name == "faults":
            p.add_argument(
                "--accept",
                action="store_true",
                help="forget them: the agent goes on, publishing those transactions without the changes that were not recorded",
            )

    dist = top.add_parser("distributor", help="route streams to routes").add_subparsers(dest="action", required=True)
    _add(dist, "run", cmd_distributor_run, "run a distributor daemon").add_argument("name", nargs="?")

    sub = top.add_parser("subscriber", help="apply a route to a replica").add_subparsers(dest="action", required=True)
    _add(sub, "run", cmd_subscriber_run, "run a subscriber daemon").add_argument("name", nargs="?")
    init = _add(
        sub, "init", cmd_subscriber_init, "create the subscribed tables on the replica and copy their rows; run again to resume"
    )
    init.add_argument("name", nargs="?")
    init.add_argument("--copy-from", metavar="SUBSCRIBER", help="copy from this subscriber's replica, not the primary")
    init.add_argument("--restart", action="store_true", help="throw away an interrupted init and start over")
    resync = _add(sub, "resync", cmd_subscriber_resync, "copy a subscriber's tables (or one table, online) again")
    resync.add_argument("name", nargs="?")
    resync.add_argument(
        "--table", metavar="SCHEMA.TABLE", type=table_argument, help="only this table, while the subscriber keeps running"
    )
    resync.add_argument("--copy-from", metavar="SUBSCRIBER", help="copy from this subscriber's replica, not the primary")
    skip = _add(sub, "skip", cmd_subscriber_skip, "skip one source transaction the subscriber cannot apply (logged loudly)")
    skip.add_argument("name", nargs="?")
    skip.add_argument("--position", type=int, required=True, help="the position of the transaction to skip")

    show = _add(
        top,
        "status",
        cmd_status,
        "the topology as a tree: every node's position, lag and state (exit status 1 when a node cannot be reached)",
    )
    show.add_argument("--json", action="store_true", help="as JSON (schemas/status.schema.json)")
    show.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="draw it again every SECONDS (default 2) until interrupted",
    )
    web = _add(top, "web", cmd_web, "serve one page: the topology tree and each subscriber's lag over the last hour")
    web.add_argument("--address", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    web.add_argument("--port", type=int, default=8080, help="the port (default 8080; 0: any free one)")
    web.add_argument("--interval", type=float, default=5.0, metavar="SECONDS", help="how often to look (default 5)")
    trace = _add(
        top,
        "trace",
        cmd_trace,
        "put a trace marker into a source's stream and show how long each hop took it to every subscriber",
    )
    ddl = _add(
        top,
        "ddl",
        cmd_ddl,
        "run an SQL script on a source's primary in one transaction, and on every subscriber at that place in its stream",
    )
    ddl.add_argument("--source", help="the source (default: the only one)")
    grants = _add(
        top,
        "roles",
        cmd_roles,
        "print the CREATE ROLE and GRANT script of the role that runs a source's agent, or a subscriber's applier, "
        "with no more rights than it needs",
    )
    whose = grants.add_mutually_exclusive_group(required=True)
    whose.add_argument("--source", help="the agent's role, on the source's primary")
    whose.add_argument("--subscriber", help="the applier's role, on the subscriber's replica")
    grants.add_argument("--role", help="the role's name (default: pgfanout_agent_SOURCE or pgfanout_applier_SUBSCRIBER)")
    move = _add(
        top,
        "switchover",
        cmd_switchover,
        "move a source's primary role to a subscriber, planned: writes stop on the primary, the subscriber applies "
        "everything and takes the role, the old primary becomes a subscriber of it",
    )
    move.add_argument("--source", help="the source (default: the only one)")
    move.add_argument("--to", required=True, metavar="SUBSCRIBER", help="the subscriber that becomes the primary")
    move.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="how long to wait for each step (then nothing changes)"
    )
    lose = _add(
        top,
        "failover",
        cmd_failover,
        "make a subscriber the primary of a source whose primary is gone; lists what was published but is lost",
    )
    lose.add_argument("--source", help="the source (default: the only one)")
    which = lose.add_mutually_exclusive_group(required=True)
    which.add_argument("--to", metavar="SUBSCRIBER", help="the subscriber that becomes the primary")
    which.add_argument(
        "--most-advanced", action="store_true", help="the candidate that applied the most, of those that can be reached"
    )
    lose.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to let the candidates apply what reached them before choosing",
    )
    ddl.add_argument("script", help="the SQL file (no BEGIN or COMMIT: it runs in one transaction)")
    trace.add_argument("--source", help="the source (default: the only one)")
    trace.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for every subscriber to apply it (0: do not wait)",
    )

    for name, func, text in (
        (
            "compare",
            cmd_compare,
            "compare a subscriber's tables with its share of the primary, both at one stream position, "
            "while everything runs (exit status 0 equal, 1 different, 2 no verdict)",
        ),
        (
            "repair",
            cmd_repair,
            "compare, then make the rows that differ equal to the primary's at one stream position, and compare again",
        ),
    ):
        check = _add(top, name, func, text)
        check.add_argument("subscriber")
        check.add_argument(
            "--table",
            action="append",
            type=table_argument,
            metavar="SCHEMA.TABLE",
            help="only this table (again for more; default: every table the subscriber receives)",
        )
        check.add_argument("--json", action="store_true", help="the report as JSON")
        check.add_argument("--examples", type=int, default=10, metavar="N", help="keys listed per kind of difference (10)")
        check.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="how long to wait for the agent's tick and for the subscriber to reach it (60)",
        )
        check.add_argument(
            "--pace",
            type=pace_argument,
            default=1.0,
            metavar="FRACTION",
            help="work this fraction of the time on each server and pause the rest (1: full speed, the default; "
            "0.1 on a busy primary takes a tenth of a core there)",
        )
        if name == "compare":
            check.add_argument("--repair", action="store_true", help="repair what differs (as `pgfanout repair`)")
        else:
            check.set_defaults(repair=True)

    ship = _add(
        top,
        "export",
        cmd_export,
        "write a route's transactions from a position on into a log shipping file "
        "(Avro object container) for a site without Kafka",
    )
    ship.add_argument("--route", required=True, help="the route (or source) to export")
    ship.add_argument(
        "--from",
        dest="from_position",
        type=int,
        required=True,
        metavar="POSITION",
        help="the first position the file must hold (the importing subscriber's position + 1)",
    )
    ship.add_argument("--to", required=True, metavar="FILE")
    land = _add(top, "import", cmd_import, "apply a log shipping file to a subscriber, exactly once and in order")
    land.add_argument("file")
    land.add_argument("--subscriber", help="the subscriber to apply to (default: the only one)")

    return parser


def pace_argument(text: str) -> float:
    try:
        pace = float(text)
    except ValueError:
        pace = 0.0
    if not 0 < pace <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction above 0 and at most 1")
    return pace


def table_argument(text: str) -> str:
    """A table named on the command line, in its canonical spelling (pgfanout.names)."""
    try:
        return canonical_table(text)
    except NameSyntaxError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        return int(args.func(args))
    except PgfanoutError as exc:
        print(f"pgfanout: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
