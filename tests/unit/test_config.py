import subprocess
import sys

import pytest
import yaml

from pgfanout.core.config import load_config, parse_config
from pgfanout.core.errors import ConfigError

GOOD = {
    "kafka": {"hq": {"bootstrap_servers": ["127.0.0.1:9092"]}},
    "sources": {"shop": {"dsn": "host=127.0.0.1 port=5432 dbname=shop", "kafka": "hq", "tables": ["public.orders"]}},
    "routes": {"all": {"upstream": "shop", "kafka": "hq"}},
    "distributors": {"hq-dist": {"routes": ["all"]}},
    "subscribers": {"reporting": {"route": "all", "dsn": "postgresql://report@10.0.0.5/reporting"}},
}


def variant(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split("__")
        for part in parents:
            node = node[part]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return data


def problems(data):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "test.yaml")
    return err.value.problems


def test_good_config_parses_with_defaults():
    config = parse_config(GOOD)
    assert config.source_topic("shop") == "pgfanout.source.shop"
    assert config.route_topic("all") == "pgfanout.route.all"
    assert config.stream("all") == ("hq", "pgfanout.route.all")
    assert config.origin_source("all") == "shop"
    assert config.subscribers["reporting"].group_max_transactions > 1


def test_unknown_key_is_named_by_path():
    assert problems(variant(sources__shop__tabels=["x.y"])) == ["sources.shop.tabels: Extra inputs are not permitted"]


def test_wrong_type_is_named_by_path():
    found = problems(variant(sources__shop__tick_interval_ms="soon"))
    assert len(found) == 1 and found[0].startswith("sources.shop.tick_interval_ms:")


def test_route_to_undefined_cluster():
    found = problems(variant(routes__all__kafka="region"))
    assert found == ["routes.all.kafka: no Kafka cluster named 'region' (defined: hq)"]


def test_every_problem_is_reported_at_once():
    data = variant(routes__all__kafka="nowhere", subscribers__reporting__route="missing")
    found = problems(data)
    assert any(p.startswith("routes.all.kafka") for p in found)
    assert any(p.startswith("subscribers.reporting.route") for p in found)


def test_route_loop_is_refused():
    data = variant(
        routes={"a": {"upstream": "b", "kafka": "hq"}, "b": {"upstream": "a", "kafka": "hq"}}, distributors={}, subscribers={}
    )
    found = problems(data)
    assert any("loop" in p for p in found)


def test_password_in_dsn_is_refused():
    found = problems(variant(sources__shop__dsn="host=x password=secret dbname=shop"))
    assert found[0].startswith("sources.shop.dsn:") and "password_env" in found[0]
    assert "secret" not in found[0]


def test_unqualified_table_is_refused():
    found = problems(variant(sources__shop__tables=["orders"]))
    assert "schema.table" in found[0]


def test_bad_bootstrap_server():
    found = problems(variant(kafka__hq__bootstrap_servers=["localhost"]))
    assert found[0].startswith("kafka.hq.bootstrap_servers")


def test_route_fed_by_two_distributors():
    data = variant(distributors={"a": {"routes": ["all"]}, "b": {"routes": ["all"]}})
    assert any("already fed by distributor" in p for p in problems(data))


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_config_check_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(variant(routes__all__kafka="region", sources__shop__bogus=1)))
    ok = subprocess.run([sys.executable, "-m", "pgfanout", "config", "check", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "pgfanout", "config", "check", str(bad)], capture_output=True, text=True)
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert "routes.all.kafka: no Kafka cluster named 'region'" in failed.stderr
    assert "sources.shop.bogus: Extra inputs are not permitted" in failed.stderr


def test_unsupported_filter_is_refused_with_expression_and_reason():
    found = problems(variant(routes__all__tables={"public.orders": {"where": "total * 2 > 10"}}))
    assert len(found) == 1
    assert found[0].startswith("routes.all.tables.public.orders.where:")
    assert "'total * 2 > 10'" in found[0] and "MUL" in found[0] and "not supported" in found[0]


def test_next_tier_can_only_subscribe_to_what_its_upstream_carries():
    data = variant(
        routes={
            "east": {"upstream": "shop", "kafka": "hq", "tables": {"public.orders": {"columns": ["id", "status"]}}},
            "branch": {
                "upstream": "east",
                "kafka": "hq",
                "tables": {"public.orders": {"where": "total > 5"}, "public.lines": {}},
            },
        },
        distributors={"d1": {"routes": ["east"]}, "d2": {"routes": ["branch"]}},
        subscribers={},
    )
    found = problems(data)
    assert "routes.branch.tables.public.orders: uses columns the upstream route does not carry: total" in found
    assert any(p.startswith("routes.branch.tables.public.lines: the upstream route does not carry") for p in found)


def test_share_of_a_route_combines_every_tier():
    data = variant(
        routes={
            "east": {
                "upstream": "shop",
                "kafka": "hq",
                "tables": {"public.orders": {"where": "region = 'east'", "columns": ["id", "region", "total"]}},
            },
            "branch": {
                "upstream": "east",
                "kafka": "hq",
                "tables": {"public.orders": {"where": "total > 5", "columns": ["id", "total"]}},
            },
        },
        distributors={"d1": {"routes": ["east"]}, "d2": {"routes": ["branch"]}},
        subscribers={},
    )
    config = parse_config(data)
    columns, filters = config.share_of("branch")["public.orders"]
    assert columns == {"id", "total"}
    assert [f.sql() for f in filters] == ["region = 'east'", "total > 5"]
    assert set(config.subscriptions_of("shop")) == {"east", "branch"}


def test_busy_ticks_cannot_be_faster_than_normal_ones():
    found = problems(variant(sources__shop__tick_interval_ms=100, sources__shop__busy_tick_interval_ms=50))
    assert len(found) == 1 and "busy_tick_interval_ms (50) must be at least tick_interval_ms (100)" in found[0]
    assert problems(variant(sources__shop__tick_interval_ms=100, sources__shop__capture_trigger="java"))


def test_table_and_column_names_are_read_as_postgresql_reads_them():
    data = variant(
        sources__shop__tables=['"Sales"."Order Lines"', "Public.Orders", "app.*"],
        sources__shop__keys={'"Sales"."Order Lines"': ['"Order No"', "Line"]},
        sources__shop__exclude=['APP."Audit"'],
        routes__all__tables={
            '"Sales"."Order Lines"': {"where": '"Qty Ordered" > 0', "columns": ['"Order No"', "line", '"Qty Ordered"']}
        },
    )
    config = parse_config(data)
    source = config.sources["shop"]
    assert source.tables == ['"Sales"."Order Lines"', "public.orders", "app.*"]
    assert source.keys == {'"Sales"."Order Lines"': ["Order No", "line"]}
    assert source.exclude == ['app."Audit"']
    subscription = config.routes["all"].tables['"Sales"."Order Lines"']
    assert subscription.columns == ["Order No", "line", "Qty Ordered"]
    assert subscription.used_columns() == {"Order No", "line", "Qty Ordered"}


def test_bad_names_and_one_table_twice_are_refused():
    found = problems(
        variant(
            sources__shop__tables=["Sales.Order Lines", "public.orders", '"public".orders'],
            routes__all__tables={"public.x": {"columns": ["Qty Ordered"]}},
        )
    )
    assert any(p.startswith("sources.shop.tables:") and "'Sales.Order Lines' is not a valid name" in p for p in found)
    found = problems(variant(sources__shop__tables=["public.orders", '"public".orders']))
    assert found == ["sources.shop.tables: Value error, listed twice: public.orders"]
    found = problems(variant(routes__all__tables={"public.x": {"columns": ["Qty Ordered"]}}))
    assert len(found) == 1 and "'Qty Ordered' is not a valid name" in found[0]


def test_a_tier_below_sees_the_same_table_however_it_is_spelled():
    data = variant(routes__all__tables={'"Sales"."Order Lines"': {"columns": ['"Order No"', "qty"]}})
    data["routes"]["branch"] = {
        "upstream": "all",
        "kafka": "hq",
        "tables": {'"Sales"."Order Lines"': {"columns": ['"Order No"', "QTY"]}},
    }
    assert parse_config(data).routes["branch"].tables is not None
    data["routes"]["branch"]["tables"] = {'"Sales"."Order Lines"': {"columns": ['"Order No"', '"QTY"']}}
    found = problems(data)
    assert found == ['routes.branch.tables."Sales"."Order Lines": uses columns the upstream route does not carry: QTY']


def test_a_scheduled_compare_names_its_tables_canonically_and_refuses_a_pace_out_of_range():
    config = parse_config(variant(subscribers__reporting__compare={"every_minutes": 30, "tables": ['Public."Orders"']}))
    schedule = config.subscribers["reporting"].compare
    assert schedule.tables == ['public."Orders"'] and schedule.pace == 0.1 and schedule.timeout_seconds == 60
    assert parse_config(GOOD).subscribers["reporting"].compare is None
    found = problems(variant(subscribers__reporting__compare={"every_minutes": 0, "pace": 1.5}))
    assert any("subscribers.reporting.compare.every_minutes" in p for p in found), found
    assert any("subscribers.reporting.compare.pace" in p for p in found), found


def test_candidate_primaries_are_the_subscribers_that_carry_the_source_whole():
    data = variant()
    data["routes"]["part"] = {"upstream": "all", "kafka": "hq", "tables": {"public.orders": {"where": "id > 1"}}}
    data["distributors"]["part-dist"] = {"routes": ["part"]}
    data["subscribers"]["branch"] = {"route": "part", "dsn": "host=10.0.0.6 dbname=branch"}
    data["subscribers"]["self"] = {"route": "all", "dsn": GOOD["sources"]["shop"]["dsn"]}
    data["sources"]["shop"]["as_subscriber"] = "self"
    config = parse_config(data)
    assert config.candidates_of("shop") == ["reporting", "self"]
    assert not config.carries_whole("branch", "shop")
    assert config.primary_name("shop", "") == "self" and config.primary_name("shop", "reporting") == "reporting"
    assert config.primary_database("shop", "").dsn == GOOD["sources"]["shop"]["dsn"]
    assert config.primary_database("shop", "reporting").dsn == GOOD["subscribers"]["reporting"]["dsn"]
    assert config.primary_database("shop", "elsewhere") is None
    data["sources"]["shop"]["candidates"] = ["self"]
    assert parse_config(data).candidates_of("shop") == ["self"]


def test_candidates_and_as_subscriber_must_name_subscribers():
    found = problems(variant(sources__shop__as_subscriber="nobody", sources__shop__candidates=["reporting", "ghost"]))
    assert "sources.shop.as_subscriber: no subscriber named 'nobody'" in found
    assert "sources.shop.candidates.1: no subscriber named 'ghost'" in found
