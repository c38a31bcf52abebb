"""docker-compose.yml cannot run here (no Docker engine), so it is checked statically."""

import re
import tomllib
from pathlib import Path

import psycopg.conninfo
import pytest
import yaml

from devstack.sample import SCHEMA_SQL
from pgfanout.cli.main import build_parser
from pgfanout.core.config import load_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PGFANOUT_SERVICES = {name: s for name, s in SERVICES.items() if s.get("image") == "pgfanout:local"}


def config_mount(service):
    for volume in service["volumes"]:
        host, container, *_ = volume.split(":")
        if container == service["environment"]["PGFANOUT_CONFIG"]:
            return REPO / host
    raise AssertionError("the config file is not mounted where PGFANOUT_CONFIG points")


CONFIG = load_config(config_mount(next(iter(PGFANOUT_SERVICES.values()))))


def dockerfile_of(service) -> str:
    build = service["build"]
    return (REPO / build["context"] / build["dockerfile"]).read_text()


def base_image(service) -> str:
    """The image a service runs, or for one built from a Dockerfile the image its last stage starts from."""
    if "build" not in service:
        return service["image"]
    dockerfile = dockerfile_of(service)
    image = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)[-1]
    if variable := re.fullmatch(r"\$\{(\w+)\}", image):
        image = re.search(rf"^ARG {variable.group(1)}=(\S+)", dockerfile, re.M).group(1)
    return image


def test_every_dependency_is_a_service():
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on undefined service {dependency}"


def test_every_host_in_the_config_is_a_service_on_the_right_port():
    for name, db in [*CONFIG.sources.items(), *CONFIG.subscribers.items()]:
        parts = psycopg.conninfo.conninfo_to_dict(db.dsn)
        assert parts["host"] in SERVICES, f"{name}: host {parts['host']} is not a compose service"
        assert base_image(SERVICES[parts["host"]]).startswith("postgres:")
        assert parts["port"] == "5432"
        assert parts["dbname"] == SERVICES[parts["host"]]["environment"]["POSTGRES_DB"]
    for cluster in CONFIG.kafka.values():
        for server in cluster.bootstrap_servers:
            host, port = server.rsplit(":", 1)
            assert host in SERVICES
            advertised = SERVICES[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
            assert f"//{host}:{port}" in advertised


def test_every_secret_the_config_names_is_in_the_environment():
    names = {db.password_env for db in [*CONFIG.sources.values(), *CONFIG.subscribers.values()] if db.password_env}
    assert names
    for service_name, service in PGFANOUT_SERVICES.items():
        missing = names - set(service["environment"])
        assert not missing, f"{service_name} lacks {missing}"


@pytest.mark.parametrize("name", sorted(PGFANOUT_SERVICES))
def test_every_pgfanout_command_parses_and_names_configured_things(name):
    command = PGFANOUT_SERVICES[name]["command"]
    args = build_parser().parse_args(command)
    if command[0] == "agent":
        assert args.source in CONFIG.sources
    elif command[0] == "distributor":
        assert args.name in CONFIG.distributors
    elif command[0] == "subscriber":
        assert args.name in CONFIG.subscribers
        assert command[1] in ("run", "init")
    else:
        pytest.fail(f"unexpected command {command}")


def test_every_daemon_of_the_config_has_a_service():
    commands = [tuple(s["command"][:3]) for s in PGFANOUT_SERVICES.values()]
    for name in CONFIG.distributors:
        assert ("distributor", "run", name) in commands
    for name in CONFIG.subscribers:
        assert ("subscriber", "run", name) in commands
    assert any(c[:2] == ("agent", "run") for c in commands)


@pytest.mark.parametrize("name", ["kafka", "kafka-region"])
def test_kafka_is_kraft_from_the_official_image(name):
    kafka = SERVICES[name]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"1@{name}:9093"
    assert "healthcheck" in kafka


def test_the_topology_has_tiers_across_clusters():
    east, branch = CONFIG.routes["east"], CONFIG.routes["branch"]
    assert CONFIG.stream(east.upstream)[0] != east.kafka, "HQ -> region crosses clusters"
    assert branch.upstream == "east" and east.tables and branch.tables
    assert CONFIG.origin_source("branch") == "shop"


def test_a_replica_without_the_sample_schema_is_initialized_before_its_subscriber_runs():
    for name, service in PGFANOUT_SERVICES.items():
        if service["command"][:2] == ["subscriber", "run"]:
            subscriber = CONFIG.subscribers[service["command"][2]]
            host = psycopg.conninfo.conninfo_to_dict(subscriber.dsn)["host"]
            mounts = " ".join(SERVICES[host].get("volumes", []))
            if "sample-schema.sql" not in mounts:
                assert any(
                    SERVICES[d]["command"][:2] == ["subscriber", "init"] for d in service["depends_on"] if d in PGFANOUT_SERVICES
                ), f"{name}: nothing creates {host}'s tables"


def test_the_image_contains_every_package():
    dockerfile = (REPO / "Dockerfile").read_text()
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in {p.split(".")[0] for p in packages} | {"schemas"}:
        assert re.search(rf"^COPY {package} ", dockerfile, re.M), f"Dockerfile does not copy {package}"


def test_container_schema_matches_the_sample_schema():
    def normal(text):
        return " ".join(text.split())

    statements = [s for s in (REPO / "docker" / "sample-schema.sql").read_text().split(";")]
    body = [normal(re.sub(r"--[^\n]*", "", s)) for s in statements]
    assert [b for b in body if b] == [normal(s) for s in SCHEMA_SQL]


def test_the_primary_image_has_the_c_capture_trigger_and_capture_insists_on_it():
    for name, source in CONFIG.sources.items():
        host = psycopg.conninfo.conninfo_to_dict(source.dsn)["host"]
        primary = SERVICES[host]
        assert source.capture_trigger == "c", f"{name}: the compose primary has the library; do not fall back silently"
        assert base_image(primary) == SERVICES["replica1"]["image"], "the primary runs the replicas' PostgreSQL"
        dockerfile = dockerfile_of(primary)
        assert re.search(r"^COPY agent/capture_c ", dockerfile, re.M)
        assert re.search(r"make -C \S+ .*install", dockerfile)
        final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
        assert "pgfanout_capture.so /usr/lib/postgresql/${PG_MAJOR}/lib/" in final_stage


def test_local_build_products_stay_out_of_the_images():
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in ("**/*.so", "**/*.o", ".venv", ".git"):
        assert pattern in ignored, f".dockerignore lacks {pattern}"


def test_prometheus_scrapes_every_daemon_on_its_metrics_port():
    """Each daemon service of the compose file serves metrics where the config says, and Prometheus scrapes
    exactly those."""
    prometheus = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    expected = set()
    for name, service in PGFANOUT_SERVICES.items():
        command = service["command"]
        if command[1] != "run":
            continue
        kind, daemon = command[0], command[-1]
        settings = {"agent": CONFIG.sources, "distributor": CONFIG.distributors, "subscriber": CONFIG.subscribers}[kind][daemon]
        assert settings.metrics_port is not None, f"{name} serves no metrics"
        assert settings.metrics_address == "0.0.0.0", f"{name}: metrics must listen beyond the container"
        expected.add(f"{name}:{settings.metrics_port}")
    assert targets == expected
    assert SERVICES["grafana"]["depends_on"] == ["prometheus"]


def test_grafana_gets_the_dashboard_and_prometheus():
    volumes = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}  # where -> from
    assert (REPO / volumes["/var/lib/grafana/dashboards"].lstrip("./") / "pgfanout.json").exists()
    provisioning = REPO / volumes["/etc/grafana/provisioning"].lstrip("./")
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    dashboards = yaml.safe_load((provisioning / "dashboards" / "pgfanout.yml").read_text())["providers"][0]
    assert dashboards["options"]["path"] == "/var/lib/grafana/dashboards"


# -- secured links: the same settings as `python -m devstack local up --secure` -------------------------

KAFKA_SERVICES = {name: s for name, s in SERVICES.items() if s.get("image", "").startswith("apache/kafka:")}
POSTGRES_SERVICES = {name: s for name, s in SERVICES.items() if "POSTGRES_DB" in (s.get("environment") or {})}


def mounted(service, container_path: str) -> str | None:
    """The host side (a path or a volume name) of what ``service`` mounts at ``container_path``."""
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        if container_path == container or container_path.startswith(container.rstrip("/") + "/"):
            return host
    return None


@pytest.mark.parametrize("name", sorted(KAFKA_SERVICES))
def test_kafka_takes_only_sasl_scram_over_tls(name):
    assert len(KAFKA_SERVICES) == 2 and len(POSTGRES_SERVICES) == 4
    kafka = KAFKA_SERVICES[name]
    env = kafka["environment"]
    listeners = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert listeners == {"SASL_SSL": "SASL_SSL", "CONTROLLER": "SSL"}
    assert {listener.split("://")[0] for listener in env["KAFKA_LISTENERS"].split(",")} == set(listeners)
    assert env["KAFKA_ADVERTISED_LISTENERS"].startswith("SASL_SSL://")
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] == "SCRAM-SHA-512"
    for key in ("KAFKA_SSL_KEYSTORE_LOCATION", "KAFKA_SSL_TRUSTSTORE_LOCATION"):
        assert mounted(kafka, env[key]) == "certs", f"{name}: {key} is not on the certs volume"
    script = kafka["entrypoint"][-1]
    assert mounted(kafka, script) == "./docker/secure/kafka-start.sh"
    assert "--command-config" in " ".join(kafka["healthcheck"]["test"])


def test_the_kafka_start_script_passes_the_scram_password_through_a_file_only():
    script = (REPO / "docker/secure/kafka-start.sh").read_text()
    commands = [line for line in script.splitlines() if "PGFANOUT_KAFKA_PASSWORD" in line and not line.lstrip().startswith("#")]
    for line in commands:
        assert line.lstrip().startswith(("printf", "quoted", ": ", '"$SCRAM_USER"')), (
            f"the password reaches a command line: {line}"
        )
    assert 'java -cp "$KAFKA_LIBS/*" "@$args"' in script


def test_every_kafka_client_uses_sasl_scram_over_tls_verified_by_the_deployment_ca():
    for name, cluster in CONFIG.kafka.items():
        assert cluster.security_protocol == "SASL_SSL" and cluster.sasl_mechanism == "SCRAM-SHA-512", name
        for service_name, service in PGFANOUT_SERVICES.items():
            assert mounted(service, cluster.ssl_cafile) == "certs", f"{service_name} lacks {cluster.ssl_cafile}"
            assert cluster.sasl_password_env in service["environment"], f"{service_name} lacks {cluster.sasl_password_env}"


def test_every_database_connection_verifies_the_server():
    for name, db in [*CONFIG.sources.items(), *CONFIG.subscribers.items()]:
        parts = psycopg.conninfo.conninfo_to_dict(db.dsn)
        assert parts.get("sslmode") == "verify-full", name
        for service_name, service in PGFANOUT_SERVICES.items():
            assert mounted(service, parts["sslrootcert"]) == "certs", f"{service_name} lacks {parts['sslrootcert']}"


@pytest.mark.parametrize("name", sorted(POSTGRES_SERVICES))
def test_postgres_takes_only_tls_with_scram(name):
    postgres = POSTGRES_SERVICES[name]
    settings = dict(arg.split("=", 1) for arg in postgres["command"] if "=" in arg)
    assert settings["ssl"] == "on" and settings["password_encryption"] == "scram-sha-256"
    for key in ("ssl_cert_file", "ssl_key_file"):
        assert mounted(postgres, settings[key]) == "certs"
    hba_script = mounted(postgres, "/docker-entrypoint-initdb.d/90-hostssl-only.sh")
    assert hba_script == "./docker/secure/hostssl-only.sh"
    hba = (REPO / hba_script).read_text().split("HBA\n")[1]
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert all(rule[0] in ("local", "hostssl", "hostnossl") for rule in rules), rules
    assert all(rule[-1] == ("reject" if rule[0] == "hostnossl" else "scram-sha-256") for rule in rules), rules


def test_the_server_certificate_names_every_server():
    script = (REPO / "docker/secure/make-certs.sh").read_text()
    hosts = re.search(r"HOSTS=\$\{CERT_HOSTS:-([^}]*)\}", script).group(1).split()
    assert set(KAFKA_SERVICES) | set(POSTGRES_SERVICES) <= set(hosts)
    for name in [*KAFKA_SERVICES, *POSTGRES_SERVICES]:
        assert SERVICES[name]["depends_on"]["certs"]["condition"] == "service_completed_successfully"


def test_no_password_is_written_in_the_compose_file_or_the_config():
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}: {key} is not taken from the environment"
    config = (REPO / "docker/pgfanout.yaml").read_text()
    assert "password=" not in config.replace("password_env", "")
