"""The chaos run's account at the end: every replica against its share of the primary, every topic's
positions, every replica's applied position ranges."""

from __future__ import annotations

import psycopg

from bench.chaos.schedule import Account, duplicated_or_unordered, missing, range_problems
from bench.chaos.tree import MARKS, SHARE, Tree
from devstack.topics import read_topic, transactions
from pgfanout.core.config import Config

TRANSFERS = "SELECT id, from_id, to_id, amount, xid FROM public.transfers {} ORDER BY id"
ACCOUNTS = "SELECT id, balance FROM public.accounts {} ORDER BY id"
MARK_ROWS = f"SELECT id FROM {MARKS} ORDER BY id"
PGBENCH = {
    "pgbench_accounts": "SELECT md5(string_agg(a::text, ',' ORDER BY aid)) FROM public.pgbench_accounts a",
    "pgbench_branches": "SELECT md5(string_agg(b::text, ',' ORDER BY bid)) FROM public.pgbench_branches b",
    "pgbench_tellers": "SELECT md5(string_agg(t::text, ',' ORDER BY tid)) FROM public.pgbench_tellers t",
}


def final(tree: Tree, committed: set[str], account: Account) -> None:
    with psycopg.connect(tree.primary_dsn) as conn:
        primary = _snapshot(conn, share=False)
        share = _snapshot(conn, share=True)
    on_primary = {row[0] for row in primary["transfers"]}
    account.lost += [f"transfer {t} was committed but is not on the primary" for t in sorted(committed - on_primary)[:20]]
    for subscriber in tree.tier1 + tree.tier2:
        expected = primary if subscriber in tree.tier1 else share
        with psycopg.connect(tree.replica_dsn(subscriber)) as conn:
            found = _snapshot(conn, share=False, pgbench=subscriber in tree.tier1)
            ranges = conn.execute(
                "SELECT first_position, last_position FROM pgfanout_replica.applied WHERE subscriber = %s "
                "ORDER BY first_position",
                (subscriber,),
            ).fetchall()
        _compare(subscriber, expected, found, account)
        gaps, overlaps = range_problems(subscriber, [tuple(r) for r in ranges])
        account.lost += gaps
        account.duplicated += overlaps
    _topics(tree, share, account)


def _snapshot(conn: psycopg.Connection, share: bool, pgbench: bool = True) -> dict[str, object]:
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    where_transfers = f"WHERE from_id <= {SHARE}" if share else ""
    where_accounts = f"WHERE id <= {SHARE}" if share else ""
    rows: dict[str, object] = {
        "transfers": [tuple(r) for r in conn.execute(TRANSFERS.format(where_transfers))],
        "accounts": [tuple(r) for r in conn.execute(ACCOUNTS.format(where_accounts))],
        "marks": [r[0] for r in conn.execute(MARK_ROWS)],
    }
    if pgbench and not share:
        for table, query in PGBENCH.items():
            rows[table] = conn.execute(query).fetchone()[0]
    conn.execute("COMMIT")
    return rows


def _compare(subscriber: str, expected: dict[str, object], found: dict[str, object], account: Account) -> None:
    wanted, got = set(expected["transfers"]), set(found["transfers"])
    account.lost += [f"{subscriber}: lacks transfer {row[0]}" for row in sorted(wanted - got)[:20]]
    account.unequal += [
        f"{subscriber}: holds transfer {row[0]} the primary's share does not" for row in sorted(got - wanted)[:20]
    ]
    for key in ("accounts", "marks", *PGBENCH):
        if key in found and found[key] != expected[key]:
            account.unequal.append(f"{subscriber}: {key} differ from the primary's share")


def _topics(tree: Tree, share: dict[str, object], account: Account) -> None:
    """The source topic and route all hold positions 1..N once each, in order; route region holds, once each
    and in order, every position whose transaction moved money in the share."""
    config = tree.config
    source = _positions(config, tree.name)
    account.duplicated += duplicated_or_unordered(f"topic of {tree.name}", [p for p, _ in source])
    account.lost += missing(
        f"topic of {tree.name}", [p for p, _ in source], set(range(1, max((p for p, _ in source), default=0) + 1))
    )
    everything = _positions(config, f"{tree.name}.all")
    account.duplicated += duplicated_or_unordered(f"topic of {tree.name}.all", [p for p, _ in everything])
    account.lost += missing(f"topic of {tree.name}.all", [p for p, _ in everything], {p for p, _ in source})
    region = _positions(config, f"{tree.name}.region")
    account.duplicated += duplicated_or_unordered(f"topic of {tree.name}.region", [p for p, _ in region])
    position_of = {xid: p for p, xid in source}
    in_share = {position_of[row[4]] for row in share["transfers"] if row[4] in position_of}
    account.lost += missing(f"topic of {tree.name}.region", [p for p, _ in region], in_share)


def _positions(config: Config, stream: str) -> list[tuple[int, int]]:
    """(position, xid) of every whole transaction of a stream, in stream order."""
    return [(part["position"], part["xid"]) for part in transactions(read_topic(config, stream)) if part["last_chunk"]]
