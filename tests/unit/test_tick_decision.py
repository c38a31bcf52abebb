"""When the agent takes a tick: the log's sequence and the last tick's running transactions decide."""

from agent.agent import tick_needed, tick_pause


def test_something_logged_since_the_last_tick():
    assert tick_needed((11, True), (10, True), running_at_last_tick=False) is True


def test_nothing_logged_and_nothing_was_running():
    assert tick_needed((10, True), (10, True), running_at_last_tick=False) is False


def test_a_transaction_running_at_the_last_tick_may_have_logged_before_it():
    assert tick_needed((10, True), (10, True), running_at_last_tick=True) is None  # ask the log


def test_first_tick_after_start():
    assert tick_needed((1, False), None, running_at_last_tick=True) is True


def test_ticks_slow_down_only_while_the_source_is_busy():
    # 50 ms ticks and 200 ms while more than 1,000 transactions a second commit
    assert tick_pause(10, 0.05, 50, 200, 1000) == 0.05  # 200 tps: lag matters more than batch size
    assert tick_pause(51, 0.05, 50, 200, 1000) == 0.2  # 1,020 tps
    assert tick_pause(50, 0.05, 50, 200, 1000) == 0.05  # exactly the threshold is not busy
    assert tick_pause(300, 0.2, 50, 200, 1000) == 0.2  # still busy at the longer interval
    assert tick_pause(100, 0.2, 50, 200, 1000) == 0.05  # 500 tps: back to short ticks
    assert tick_pause(0, 0.0, 50, 200, 1000) == 0.05
