"""The sample schema and a concurrent workload, shared by the demo, the tests and the benchmarks.

Keys of several types (bigint, text, uuid, composite), foreign keys with cascades,
key-changing updates, and money transfers whose total must stay constant.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import psycopg

SAMPLE_TABLES = ["public.customers", "public.products", "public.orders", "public.order_lines", "public.accounts"]
ACCOUNTS = 20
OPENING_BALANCE = 1000

SCHEMA_SQL = [
    """CREATE TABLE IF NOT EXISTS public.customers (
        id bigint PRIMARY KEY,
        name text NOT NULL,
        email text,
        created_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS public.products (
        sku text PRIMARY KEY,
        title text NOT NULL,
        price numeric(10,2) NOT NULL,
        tags text[])""",
    """CREATE TABLE IF NOT EXISTS public.orders (
        id uuid PRIMARY KEY,
        customer_id bigint NOT NULL REFERENCES public.customers,
        placed_at timestamptz NOT NULL,
        status text NOT NULL,
        note jsonb)""",
    """CREATE TABLE IF NOT EXISTS public.order_lines (
        order_id uuid REFERENCES public.orders ON DELETE CASCADE,
        line_no integer,
        sku text NOT NULL REFERENCES public.products ON UPDATE CASCADE,
        qty integer NOT NULL,
        PRIMARY KEY (order_id, line_no))""",
    """CREATE TABLE IF NOT EXISTS public.accounts (
        id integer PRIMARY KEY,
        balance numeric(14,2) NOT NULL)""",
]


def create_schema(conn: psycopg.Connection) -> None:
    with conn.transaction():
        for statement in SCHEMA_SQL:
            conn.execute(statement)


def seed(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute(
            "INSERT INTO public.products SELECT 'SKU-' || i, 'Product ' || i, (i * 1.25)::numeric(10,2), "
            "ARRAY['tag' || (i % 3), 'ünï ''quoted'' ' || i] FROM generate_series(1, 50) i ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO public.accounts SELECT i, %s FROM generate_series(1, %s) i ON CONFLICT DO NOTHING",
            (OPENING_BALANCE, ACCOUNTS),
        )


@dataclass
class WorkloadStats:
    committed: int = 0
    retried: int = 0
    xids: list[int] = field(default_factory=list)  # committed transactions that changed published rows
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, committed: int = 0, retried: int = 0, xid: int | None = None) -> None:
        with self.lock:
            self.committed += committed
            self.retried += retried
            if xid is not None:
                self.xids.append(xid)


# Every write of this workload is to a published table, so a transaction that has an xid has logged
# something. (Asking the log instead would hold a lock on both log tables until commit, and with writers
# always busy, the agent could seldom empty the old one.)
XID_IF_CAPTURED = "SELECT pg_current_xact_id_if_assigned()::text::bigint"


def _one_transaction(
    conn: psycopg.Connection, rng: random.Random, writer: int, counter: list[int], record_xid: bool = False
) -> int | None:
    """Run one random transaction; with ``record_xid``, return its xid if capture logged anything."""
    choice = rng.random()
    with conn.transaction():
        _body(conn, rng, writer, counter, choice)
        xid = None
        if record_xid:
            xid = conn.execute(XID_IF_CAPTURED).fetchone()[0]
    return xid


def _body(conn: psycopg.Connection, rng: random.Random, writer: int, counter: list[int], choice: float) -> None:
    if choice < 0.30:
        counter[0] += 1
        customer = writer * 10_000_000 + counter[0]
        conn.execute(
            "INSERT INTO public.customers (id, name, email) VALUES (%s, %s, %s)",
            (customer, f"Customer {customer}", None if rng.random() < 0.2 else f"c{customer}@example.org"),
        )
        order = uuid.uuid4()
        conn.execute(
            "INSERT INTO public.orders VALUES (%s, %s, now(), 'new', %s)",
            (order, customer, psycopg.types.json.Jsonb({"writer": writer, "gift": rng.random() < 0.1})),
        )
        for line in range(1, rng.randint(1, 4) + 1):
            sku = conn.execute("SELECT sku FROM public.products ORDER BY random() LIMIT 1").fetchone()[0]
            conn.execute("INSERT INTO public.order_lines VALUES (%s, %s, %s, %s)", (order, line, sku, rng.randint(1, 9)))
    elif choice < 0.45:
        conn.execute("UPDATE public.products SET price = price + 0.01 WHERE sku = %s", (f"SKU-{rng.randint(1, 50)}",))
    elif choice < 0.75:
        a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
        amount = rng.randint(1, 50)
        # lock in id order so concurrent transfers do not deadlock
        for account in sorted((a, b)):
            conn.execute("SELECT 1 FROM public.accounts WHERE id = %s FOR UPDATE", (account,))
        conn.execute("UPDATE public.accounts SET balance = balance - %s WHERE id = %s", (amount, a))
        conn.execute("UPDATE public.accounts SET balance = balance + %s WHERE id = %s", (amount, b))
    elif choice < 0.85:
        conn.execute(
            "UPDATE public.orders SET status = 'shipped' WHERE id = "
            "(SELECT id FROM public.orders WHERE status = 'new' LIMIT 1 FOR UPDATE SKIP LOCKED)"
        )
    elif choice < 0.95:
        conn.execute("DELETE FROM public.orders WHERE id = (SELECT id FROM public.orders LIMIT 1 FOR UPDATE SKIP LOCKED)")
    else:
        # a key-changing update, cascading to order_lines through ON UPDATE CASCADE
        sku = f"SKU-{rng.randint(1, 50)}"
        conn.execute("UPDATE public.products SET sku = sku || '-v' || %s WHERE sku = %s", (writer, sku))
        conn.execute("UPDATE public.products SET sku = %s WHERE sku = %s || '-v' || %s", (sku, sku, writer))


def run_workload(
    dsn: str,
    seconds: float,
    writers: int,
    max_transactions: int | None = None,
    seed_value: int = 1,
    record_xids: bool = False,
    pause_seconds: float = 0.0,
    stop: threading.Event | None = None,
) -> WorkloadStats:
    """Run ``writers`` concurrent connections for ``seconds`` (and at most ``max_transactions`` each, and
    until ``stop`` is set), each pausing ``pause_seconds`` after every transaction."""
    stats = WorkloadStats()
    deadline = time.monotonic() + seconds

    def writer(index: int) -> None:
        rng = random.Random(seed_value * 1000 + index)
        counter = [0]
        with psycopg.connect(dsn, autocommit=True) as conn:
            done = 0
            while (
                time.monotonic() < deadline
                and (max_transactions is None or done < max_transactions)
                and not (stop and stop.is_set())
            ):
                try:
                    xid = _one_transaction(conn, rng, index, counter, record_xids)
                    done += 1
                    stats.add(committed=1, xid=xid)
                    if pause_seconds:
                        time.sleep(pause_seconds)
                except (
                    psycopg.errors.SerializationFailure,
                    psycopg.errors.DeadlockDetected,
                    psycopg.errors.UniqueViolation,
                    psycopg.errors.ForeignKeyViolation,
                ):
                    stats.add(retried=1)

    threads = [threading.Thread(target=writer, args=(i + 1,), daemon=True) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stats
