"""The replication systems a peer run compares, each set up on the same pair of clusters.

Each one copies the primary's pgbench database into an empty database on the replica cluster
(``start``, timed with the wait for the replica to catch up), can stop and restart only its applying
side (``stop_apply``/``start_apply``, which returns once the applier runs: capture goes on), names
its processes for the idle CPU figure, and removes itself (``remove``).
"""

from __future__ import annotations

import shutil
import subprocess
import time

import psycopg
from psycopg import sql

from agent import capture
from bench.common import wait_for_ready
from bench.peers.workload import TABLES, backends_of, children
from devstack import processes
from devstack.demo import daemon_argv, reset_streams, start_daemon, write_config
from devstack.postgres import bin_dir
from pgfanout.core.config import parse_config
from pgfanout.runtime.pg import connect


def dump_schema(primary, db: str) -> str:
    """The tables' definitions (no rows), as an operator prepares a subscriber for native replication or
    Slony-I; taken before Slony-I adds its triggers."""
    return subprocess.run(
        [str(bin_dir() / "pg_dump"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "--schema-only",
         "--no-owner", "--no-privileges", *[f"--table={t}" for t in TABLES], db],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def load_schema(replica, db: str, dump: str) -> None:
    # psql, not one execute: pg_dump writes psql meta-commands (\restrict)
    subprocess.run(
        [str(bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(replica.port), "-U", "postgres", "-q",
         "-v", "ON_ERROR_STOP=1", "-o", "/dev/null", db],
        input=dump, text=True, check=True,
    )  # fmt: skip


class Native:
    """PostgreSQL's logical replication: a publication of the tables, a subscription copying them."""

    name = "native"

    def __init__(self, stack, db: str):
        self.primary, self.replica, self.db = stack.postgres("primary"), stack.postgres("replica"), db

    def prepare(self) -> None:
        self.schema = dump_schema(self.primary, self.db)
        with psycopg.connect(self.primary.dsn(self.db), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE PUBLICATION peers FOR TABLE {}").format(
                sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in TABLES)))  # fmt: skip

    def start(self) -> None:
        load_schema(self.replica, self.db, self.schema)
        conninfo = f"host=127.0.0.1 port={self.primary.port} user=postgres dbname={self.db}"
        with psycopg.connect(self.replica.dsn(self.db), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SUBSCRIPTION peers CONNECTION {} PUBLICATION peers").format(sql.Literal(conninfo)))
            while conn.execute("SELECT count(*) FILTER (WHERE srsubstate <> 'r') FROM pg_subscription_rel").fetchone()[0]:
                time.sleep(0.01)

    def stop_apply(self) -> None:
        with psycopg.connect(self.replica.dsn(self.db), autocommit=True) as conn:
            conn.execute("ALTER SUBSCRIPTION peers DISABLE")
            while conn.execute("SELECT count(pid) FROM pg_stat_subscription").fetchone()[0]:
                time.sleep(0.01)

    def start_apply(self) -> None:
        with psycopg.connect(self.replica.dsn(self.db), autocommit=True) as conn:
            conn.execute("ALTER SUBSCRIPTION peers ENABLE")
            while not conn.execute("SELECT count(pid) FROM pg_stat_subscription").fetchone()[0]:
                time.sleep(0.01)  # the launcher starts the apply worker (up to seconds later)

    def processes(self) -> dict[str, list[int]]:
        return {
            "walsender": backends_of(self.primary.dsn(self.db), "backend_type = 'walsender'"),
            "apply worker": backends_of(self.replica.dsn(self.db), "backend_type = 'logical replication worker'"),
        }

    def remove(self) -> None:
        with psycopg.connect(self.replica.dsn(self.db), autocommit=True) as conn:
            conn.execute("DROP SUBSCRIPTION IF EXISTS peers")


class Pgfanout:
    """The whole pipeline: agent (C trigger), distributor, subscriber, through the local Kafka broker."""

    name = "pgfanout"

    def __init__(self, stack, db: str):
        self.stack, self.db = stack, db
        self.primary, self.replica = stack.postgres("primary"), stack.postgres("replica")
        self.subscriber = f"{db}-sub"
        self.data = {
            "kafka": {"local": {"bootstrap_servers": [stack.kafka("main").bootstrap]}},
            "sources": {db: {"dsn": self.primary.dsn(db), "kafka": "local", "tables": TABLES}},
            "routes": {f"{db}-route": {"upstream": db, "kafka": "local"}},
            "distributors": {f"{db}-dist": {"routes": [f"{db}-route"]}},
            "subscribers": {self.subscriber: {"route": f"{db}-route", "dsn": self.replica.dsn(db)}},
        }
        self.config = parse_config(self.data)
        self.config_path = write_config(stack.home / f"{db}.yaml", self.data)
        self.pids: dict[str, int] = {}

    def prepare(self) -> None:
        reset_streams(self.config)
        with connect(self.config.sources[self.db], "bench") as conn:
            capture.install(conn, self.config.sources[self.db])
        self._run("agent", "run", "--source", self.db)
        self._run("distributor", "run", f"{self.db}-dist")

    def start(self) -> None:
        subprocess.run(
            daemon_argv(self.config_path, "subscriber", "init", self.subscriber), check=True, stdout=subprocess.DEVNULL
        )
        self.start_apply()

    def stop_apply(self) -> None:
        processes.stop(self.pids.pop("subscriber"))

    def start_apply(self) -> None:
        self._run("subscriber", "run", self.subscriber)

    def _run(self, *command: str) -> None:
        role = command[0]
        log_file = self.stack.log_dir / f"peers-{role}.log"
        log_file.unlink(missing_ok=True)
        self.pids[role] = start_daemon(self.stack, f"peers-{role}", daemon_argv(self.config_path, *command))
        wait_for_ready(log_file)

    def processes(self) -> dict[str, list[int]]:
        return {
            "agent": [self.pids["agent"]],
            "distributor": [self.pids["distributor"]],
            "subscriber": [self.pids["subscriber"]],
            "agent's backend": backends_of(self.primary.dsn(self.db), "application_name LIKE 'pgfanout-agent-%'"),
            "subscriber's backend": backends_of(self.replica.dsn(self.db), "application_name LIKE 'pgfanout-subscriber-%'"),
            "Kafka broker": [self.stack.kafka("main").pid()],
        }

    def remove(self) -> None:
        for pid in self.pids.values():
            processes.stop(pid)
        self.pids.clear()


class Slony:
    """Slony-I 2.2: a set of the tables, node 1 the origin, node 2 subscribed, a slon daemon per node.

    slon checks for a SYNC every 100 ms (-s 100; its default is 2,000), the setting one tunes for low lag.
    """

    name = "slony"
    CLUSTER = "peers"

    def __init__(self, stack, db: str):
        self.stack, self.db = stack, db
        self.primary, self.replica = stack.postgres("primary"), stack.postgres("replica")
        self.conninfo = {
            1: f"dbname={db} host=127.0.0.1 port={self.primary.port} user=postgres",
            2: f"dbname={db} host=127.0.0.1 port={self.replica.port} user=postgres",
        }
        self.pids: dict[int, int] = {}

    @staticmethod
    def available() -> str | None:
        """None when Slony-I can run here, else why not."""
        if not shutil.which("slonik") or not shutil.which("slon"):
            return "slonik/slon not found (Debian: apt-get install slony1-2-bin postgresql-15-slony1-2)"
        if not list((bin_dir().parent / "lib").glob("slony1_funcs*.so")):
            return f"no slony1_funcs library in {bin_dir().parent / 'lib'} (Debian: postgresql-15-slony1-2)"
        return None

    def _slonik(self, script: str) -> None:
        preamble = f"cluster name = {self.CLUSTER};\n" + "".join(
            f"node {node} admin conninfo = '{info}';\n" for node, info in self.conninfo.items()
        )
        result = subprocess.run(["slonik"], input=preamble + script, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"slonik failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def prepare(self) -> None:
        self.schema = dump_schema(self.primary, self.db)
        tables = "".join(
            f"set add table (set id = 1, origin = 1, id = {n}, fully qualified name = '{t}');\n" for n, t in enumerate(TABLES, 1)
        )
        self._slonik(
            "init cluster (id = 1, comment = 'primary');\n"
            "create set (id = 1, origin = 1, comment = 'pgbench');\n"
            + tables
            + "store node (id = 2, comment = 'replica', event node = 1);\n"
            f"store path (server = 1, client = 2, conninfo = '{self.conninfo[1]}');\n"
            f"store path (server = 2, client = 1, conninfo = '{self.conninfo[2]}');\n"
        )
        self._slon(1)

    def start(self) -> None:
        load_schema(self.replica, self.db, self.schema)
        self._slon(2)
        self._slonik("subscribe set (id = 1, provider = 1, receiver = 2, forward = no);\n")
        with psycopg.connect(self.replica.dsn(self.db), autocommit=True) as conn:
            query = sql.SQL("SELECT coalesce(bool_and(sub_active), false) FROM {}.sl_subscribe").format(
                sql.Identifier(f"_{self.CLUSTER}")
            )
            while not conn.execute(query).fetchone()[0]:
                time.sleep(0.05)

    def _slon(self, node: int) -> None:
        log_file = self.stack.log_dir / f"peers-slon-{node}.log"
        pid_file = self.stack.run_dir / f"peers-slon-{node}.pid"
        self.pids[node] = processes.spawn(["slon", "-s", "100", self.CLUSTER, self.conninfo[node]], log_file, pid_file)

    def stop_apply(self) -> None:
        processes.stop(self.pids.pop(2))

    def start_apply(self) -> None:
        self._slon(2)

    def processes(self) -> dict[str, list[int]]:
        return {
            "slon (origin)": children(self.pids[1]),
            "slon (subscriber)": children(self.pids[2]),
            "origin's backends": backends_of(self.primary.dsn(self.db), "application_name LIKE 'slon%'"),
            "subscriber's backends": backends_of(self.replica.dsn(self.db), "application_name LIKE 'slon%'"),
        }

    def remove(self) -> None:
        for pid in self.pids.values():
            processes.stop(pid)
        self.pids.clear()


SYSTEMS = {"native": Native, "pgfanout": Pgfanout, "slony": Slony}
