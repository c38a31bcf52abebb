"""Which pgbench run the capture-overhead benchmark measures, and where each kind of run is written."""

from bench.capture_overhead import parse_args, pgbench_arguments, result_name


def test_the_default_run_is_the_issues_four_clients_on_pgbenchs_one_client_thread():
    args = parse_args([])
    assert (args.duration, args.jobs, args.autogroups) == (30, 1, "as-is")
    assert pgbench_arguments(args.duration, args.jobs) == ["-c", "4", "-j", "1", "-T", "30", "-n"]


def test_another_thread_count_is_passed_to_pgbench_as_given():
    assert pgbench_arguments(20, 2)[:4] == ["-c", "4", "-j", "2"]


def test_only_the_issues_run_on_the_machine_as_it_comes_writes_the_headline_result():
    assert result_name(1, "on") == "capture_overhead"
    assert result_name(1, "not available") == "capture_overhead"
    assert result_name(2, "on") == "capture_overhead_jobs2"
    assert result_name(1, "off") == "capture_overhead_autogroups_off"
    assert result_name(2, "off") == "capture_overhead_jobs2_autogroups_off"
