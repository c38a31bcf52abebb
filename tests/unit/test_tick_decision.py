"""When the agent takes a tick: the log's sequence and the last tick's running transactions decide."""

from agent.agent import tick_needed


def test_something_logged_since_the_last_tick():
    assert tick_needed((11, True), (10, True), running_at_last_tick=False) is True


def test_nothing_logged_and_nothing_was_running():
    assert tick_needed((10, True), (10, True), running_at_last_tick=False) is False


def test_a_transaction_running_at_the_last_tick_may_have_logged_before_it():
    assert tick_needed((10, True), (10, True), running_at_last_tick=True) is None  # ask the log


def test_first_tick_after_start():
    assert tick_needed((1, False), None, running_at_last_tick=True) is True
