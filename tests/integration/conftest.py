"""Integration fixtures: one real local stack (PostgreSQL clusters + Kafka broker) per test session."""

import gc
import os
from pathlib import Path

import pytest

from devstack.broker import ensure_jars
from devstack.stack import Stack
from tests.integration.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[2]
# Under the repository, not /tmp/pytest-of-root: the postgres service user must reach it.
TEST_HOME = Path(os.environ.get("PGFANOUT_TEST_HOME", REPO / ".pgfanout-test"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def charge_leaks_to_their_test():
    """A client left open (a socket, a process handle) warns when the collector reaches it, which fails the
    test running then; collecting after each test charges the warning to the test that leaked it."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def stack():
    Stack.load(TEST_HOME).down(purge=True)  # whatever an interrupted run left behind
    started = Stack.load(TEST_HOME)
    started.up(kafka_clusters=1)
    yield started
    started.down(purge=os.environ.get("PGFANOUT_KEEP_TEST_STACK") != "1")


@pytest.fixture(scope="session")
def second_kafka(stack):
    """A second Kafka cluster, for routes that cross clusters (started on first use)."""
    node = stack.kafka("second")
    if node.pid() is None:
        node.start(ensure_jars())
    return node


@pytest.fixture
def pipeline(stack, request):
    name = request.node.name.replace("test_", "").replace("[", "_").replace("]", "").replace("-", "_")[:40].lower()
    built = Pipeline(stack, name, capture_trigger=getattr(request, "param", "auto"))
    yield built
    built.stop_all()
