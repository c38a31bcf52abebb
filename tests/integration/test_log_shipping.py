"""Log shipping: export a route into Avro container files, import them on a subscriber that has no Kafka."""

import re

from devstack.demo import wait_caught_up
from pgfanout.cli.status import subscriber_position


def position_of(pipeline, subscriber: str) -> int:
    with pipeline.replica(subscriber) as conn:
        return subscriber_position(conn, subscriber)[0]


def test_export_import_round_trip_double_import_gap_and_damage(pipeline, tmp_path):
    pipeline.prepare()
    online, offline = pipeline.subscribers  # the offline site never reads Kafka
    pipeline.start("agent", "distributor", online)
    pipeline.seed()
    thread, _ = pipeline.workload_in_background(seconds=4, writers=2)
    thread.join()
    only_online = pipeline.config.model_copy(update={"subscribers": {online: pipeline.config.subscribers[online]}})
    wait_caught_up(only_online)
    first_end = position_of(pipeline, online)

    files = pipeline.stack.home / "ship"
    files.mkdir(exist_ok=True)
    first, second = files / f"{pipeline.name}-1.avro", files / f"{pipeline.name}-2.avro"
    done = pipeline.command("export", "--route", pipeline.route, "--from", "1", "--to", str(first))
    assert done.returncode == 0, done.stderr
    exported_to = int(re.search(r"positions 1\.\.(\d+)", done.stdout).group(1))
    assert exported_to >= first_end

    thread, _ = pipeline.workload_in_background(seconds=3, writers=2, seed_value=9)
    thread.join()
    wait_caught_up(only_online)
    done = pipeline.command("export", "--route", pipeline.route, "--from", str(exported_to + 1), "--to", str(second))
    assert done.returncode == 0, done.stderr

    def import_(path):
        return pipeline.command("import", str(path), "--subscriber", offline)

    # out of order: the second file first is refused, nothing applied
    refused = import_(second)
    assert refused.returncode != 0 and "import the file holding positions 1.." in refused.stderr
    assert position_of(pipeline, offline) == 0

    # damaged and truncated copies are refused before anything is applied
    data = first.read_bytes()
    flipped = tmp_path / "flipped.avro"
    flipped.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x40]) + data[len(data) // 2 + 1 :])
    truncated = tmp_path / "truncated.avro"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    for bad, word in ((flipped, "damaged"), (truncated, "")):
        result = import_(bad)
        assert result.returncode == 3, result.stderr
        assert word in result.stderr and "nothing was applied" in result.stderr, result.stderr
        assert position_of(pipeline, offline) == 0

    applied = import_(first)
    assert applied.returncode == 0, applied.stderr
    assert position_of(pipeline, offline) == exported_to
    again = import_(first)
    assert again.returncode == 0 and "nothing to apply" in again.stdout, again.stdout + again.stderr
    assert position_of(pipeline, offline) == exported_to
    applied = import_(second)
    assert applied.returncode == 0, applied.stderr

    assert position_of(pipeline, offline) == position_of(pipeline, online)
    equal, lines = pipeline.proof()
    assert equal, "\n".join(lines)
