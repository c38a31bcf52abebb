"""The faults of the chaos run, each injected and undone by itself within a bounded time."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.chaos.tree import Tree
from devstack import processes
from devstack.broker import ensure_jars

log = logging.getLogger(__name__)
NFT_TABLE = "pgfanout_chaos"  # an nftables table of its own: removing it undoes every cut


class Faults:
    """Injects a fault of a kind into a tree; ``inject`` returns (target, seconds it lasted) once undone."""

    def __init__(self, tree: Tree, rng: random.Random, disk: bool, network: bool):
        self.tree, self.rng = tree, rng
        self.disk, self.network = disk, network
        self.ballast = tree.tmpfs / "ballast"
        self.injectors: dict[str, Callable[[], str]] = {
            "kill": self.kill,
            "pause": self.pause,
            "kafka": self.kafka,
            "postgres": self.postgres,
            "netcut": self.netcut,
            "diskfull": self.diskfull,
        }

    def inject(self, kind: str) -> str:
        return self.injectors[kind]()

    def kill(self) -> str:
        role = self.rng.choice(self.tree.roles)
        if self.tree.kill(role):
            time.sleep(self.rng.uniform(0.1, 2.0))
        self.tree.start(role)
        return role

    def pause(self) -> str:
        role = self.rng.choice(self.tree.roles)
        pid = self.tree.pid(role)
        if pid is None:
            return f"{role} (not running)"
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(self.rng.uniform(1.0, 4.0))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return role

    def kafka(self) -> str:
        node = self.tree.stack.kafka(self.rng.choice(["main", "second"]))
        pid = node.pid()
        if pid:
            processes.stop(pid, signal.SIGKILL)
        time.sleep(self.rng.uniform(0.2, 2.0))
        node.start(ensure_jars())
        return f"kafka {node.name}"

    def postgres(self) -> str:
        cluster = self.tree.stack.postgres(self.rng.choice(["primary", "replica"]))
        cluster.stop("immediate")
        time.sleep(self.rng.uniform(0.2, 2.0))
        cluster.start()
        return f"postgres {cluster.name}"

    def netcut(self) -> str:
        """Drop every packet to and from the second tier's Kafka cluster (its broker port) for a few seconds."""
        port = self.tree.stack.kafka("second").port
        if not self.network:
            raise RuntimeError("no network cut: nftables cannot be used here")
        cut(port)
        try:
            time.sleep(self.rng.uniform(2.0, 6.0))
        finally:
            restore()
        return f"kafka second, port {port}"

    def diskfull(self) -> str:
        """Fill the tmpfs under t2b's tablespace, keep it full a few seconds, free it."""
        if not self.disk:
            raise RuntimeError("no full disk: a tmpfs cannot be mounted here (needs root)")
        fill(self.ballast)
        try:
            time.sleep(self.rng.uniform(2.0, 6.0))
        finally:
            self.ballast.unlink(missing_ok=True)
        return self.tree.small

    def heal(self) -> None:
        """Undo whatever an interrupted fault left: cuts, ballast, stopped servers and daemons."""
        if self.network:
            restore()
        self.ballast.unlink(missing_ok=True)
        for name in ("primary", "replica"):
            self.tree.stack.postgres(name).start()
        for name in ("main", "second"):
            self.tree.stack.kafka(name).start(ensure_jars())
        for role in self.tree.roles:
            pid = self.tree.pid(role)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            else:
                self.tree.start(role)


def fill(path: Path) -> None:
    """Write until the file system is full."""
    chunk = b"\0" * (1024 * 1024)
    with open(path, "wb") as ballast:
        try:
            for _ in range(4096):  # bounded: 4 GiB at most
                ballast.write(chunk)
                ballast.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


def nft(*script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *script], capture_output=True, text=True)


def nftables_usable() -> str | None:
    """None when nftables can cut loopback ports here, else why not."""
    try:
        probe = nft("add", "table", "inet", NFT_TABLE)
    except FileNotFoundError:
        return "nft is not installed (scripts/install-chaos-tools.sh installs nftables)"
    if probe.returncode != 0:
        return f"nft refused: {probe.stderr.strip()}"
    restore()
    return None


def cut(port: int) -> None:
    for command in (
        ["add", "table", "inet", NFT_TABLE],
        ["add", "chain", "inet", NFT_TABLE, "output", "{ type filter hook output priority 0; }"],
        ["add", "rule", "inet", NFT_TABLE, "output", "tcp", "dport", str(port), "drop"],
        ["add", "rule", "inet", NFT_TABLE, "output", "tcp", "sport", str(port), "drop"],
    ):
        done = nft(*command)
        if done.returncode != 0:
            raise RuntimeError(f"nft {' '.join(command)}: {done.stderr.strip()}")


def restore() -> None:
    nft("delete", "table", "inet", NFT_TABLE)  # absent already: nothing to restore
