"""When the agent switches log tables and when it empties the old one."""

from agent.logswitch import Step, next_step, other

MB = 1024 * 1024


def test_the_old_table_is_emptied_before_anything_else():
    assert next_step(False, 100 * MB, 10_000, 64 * MB, 600) is Step.EMPTY_OLD
    assert next_step(False, 0, 0, 64 * MB, 600) is Step.EMPTY_OLD


def test_a_full_table_is_switched():
    assert next_step(True, 64 * MB, 1, 64 * MB, 600) is Step.SWITCH
    assert next_step(True, 64 * MB - 1, 1, 64 * MB, 600) is None


def test_an_old_table_is_switched_but_only_if_it_holds_anything():
    assert next_step(True, 8192, 600, 64 * MB, 600) is Step.SWITCH
    assert next_step(True, 8192, 599, 64 * MB, 600) is None
    assert next_step(True, 0, 100_000, 64 * MB, 600) is None


def test_the_two_tables_alternate():
    assert other(1) == 2 and other(2) == 1
