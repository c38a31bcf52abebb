"""When the agent switches log tables and when it empties the old one."""

from agent.logswitch import Held, Holder, Step, held_message, next_step, other, switch_due

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


def test_a_switch_is_due_when_the_table_is_full_or_old_and_not_empty():
    assert switch_due(64 * MB, 0, 64 * MB, 600)
    assert switch_due(8192, 600, 64 * MB, 600)
    assert not switch_due(0, 100_000, 64 * MB, 600)
    assert not switch_due(8192, 599, 64 * MB, 600)


def test_the_operator_is_told_which_sessions_hold_the_log_and_what_to_do():
    held = Held(2, 96 * MB, (Holder(4242, "idle in transaction", 3600.4), Holder(4343, None, None)))
    message = held_message(held)
    assert message.startswith(
        "log table pgfanout.log_1 cannot be emptied: pid 4242 (idle in transaction, "
        "its transaction open for 3,600 s), pid 4343 wrote into it and are still open"
    )
    assert "pgfanout.log_2 cannot be switched away from and keeps growing (96.0 MB)" in message
    assert "pg_terminate_backend(4242)" in message and "nothing committed is lost" in message
    one = held_message(Held(1, MB, (Holder(7, "active", None),)))
    assert "pid 7 (active) wrote into it and is still open" in one and "Ending that transaction" in one
