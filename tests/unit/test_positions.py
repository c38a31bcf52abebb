import pytest

from pgfanout.errors import PositionError
from pgfanout.positions import AgentState, Mark, Resume, Step, TopicTail, next_step, plan_resume


def test_next_step():
    assert next_step(0, 1, "w") is Step.APPLY
    assert next_step(41, 42, "w") is Step.APPLY
    assert next_step(42, 42, "w") is Step.DUPLICATE
    assert next_step(42, 3, "w") is Step.DUPLICATE


def test_gap_names_expected_and_found():
    with pytest.raises(PositionError) as err:
        next_step(10, 13, "route[0]@99")
    message = str(err.value)
    assert "expected position 11, found 13" in message and "route[0]@99" in message and "11..12" in message


def test_marks_order_heartbeats_after_their_transaction():
    assert Mark(5, 10) < Mark(5, 11) < Mark(6, 11) < Mark(7, 12)


def test_resume_fresh_install():
    assert plan_resume(AgentState(1, 1), None, "t") == Resume(None, 0, True)


def test_resume_in_sync():
    assert plan_resume(AgentState(9, 43), TopicTail(9, 42, True), "t") == Resume(None, 42, True)
    # empty batches advance the published tick without writing to the topic
    assert plan_resume(AgentState(12, 43), TopicTail(9, 42, True), "t") == Resume(None, 42, True)


def test_resume_after_crash_between_publish_and_record():
    assert plan_resume(AgentState(9, 43), TopicTail(10, 50, True), "t") == Resume(10, 50, True)
    assert plan_resume(AgentState(9, 43), TopicTail(10, 47, False), "t") == Resume(10, 47, False)
    # a heartbeat was published for tick 10 but not recorded
    assert plan_resume(AgentState(9, 43), TopicTail(10, 42, True), "t") == Resume(10, 42, True)


@pytest.mark.parametrize("state, tail, words", [
    (AgentState(9, 43), None, "is empty"),
    (AgentState(9, 43), TopicTail(9, 40, True), "lost or gained"),
    (AgentState(9, 43), TopicTail(10, 30, True), "behind"),
])
def test_resume_refuses_a_topic_that_lost_data(state, tail, words):
    with pytest.raises(PositionError, match=words):
        plan_resume(state, tail, "pgfanout.source.x")
