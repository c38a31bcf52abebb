import pytest

from pgfanout.core.errors import PositionError
from pgfanout.core.positions import WHOLE, AgentState, Mark, Progress, Resume, Step, TopicTail, mark_of, next_step, plan_resume


def test_next_step_for_whole_transactions():
    assert next_step(Progress(0), 1, 0, "w") is Step.APPLY
    assert next_step(Progress(41), 42, 0, "w") is Step.APPLY
    assert next_step(Progress(42), 42, 0, "w") is Step.DUPLICATE
    assert next_step(Progress(42), 3, 0, "w") is Step.DUPLICATE


def test_next_step_for_chunks():
    assert next_step(Progress(41), 42, 0, "w") is Step.APPLY
    assert next_step(Progress(42, 0), 42, 1, "w") is Step.APPLY
    assert next_step(Progress(42, 1), 42, 1, "w") is Step.DUPLICATE
    assert next_step(Progress(42, 1), 42, 0, "w") is Step.DUPLICATE
    assert next_step(Progress(42), 42, 5, "w") is Step.DUPLICATE
    with pytest.raises(PositionError, match="expected chunk 2 of position 42, found chunk 3"):
        next_step(Progress(42, 1), 42, 3, "w")
    with pytest.raises(PositionError, match="expected chunk 0 of position 43"):
        next_step(Progress(42), 43, 1, "w")
    with pytest.raises(PositionError, match="expected position 42, found 43"):
        next_step(Progress(42, 0), 43, 0, "w")  # a new transaction while one is open is a gap


def test_gap_names_expected_and_found():
    with pytest.raises(PositionError) as err:
        next_step(Progress(10), 13, 0, "route[0]@99")
    message = str(err.value)
    assert "expected position 11, found 13" in message and "route[0]@99" in message and "11..12" in message


def test_marks_grow_along_the_stream():
    def batch(tick, *parts):
        return mark_of(
            "Batch", {"tick_id": tick, "transactions": [{"position": p, "chunk": c, "last_chunk": last} for p, c, last in parts]}
        )

    stream = [
        batch(5, (10, 0, True)),
        batch(5, (11, 0, False)),
        batch(5, (11, 1, True), (12, 0, True)),
        mark_of("Heartbeat", {"tick_id": 6, "position": 12}),
        batch(7, (13, 0, True)),
    ]
    assert stream == sorted(stream) and len(set(stream)) == len(stream)
    assert stream[1] == Mark(5, 11, 0) and stream[2] == Mark(5, 12, WHOLE)


def test_resume_fresh_install():
    assert plan_resume(AgentState(1, 1), None, "t") == Resume(None, Progress(0), True)


def test_resume_in_sync():
    assert plan_resume(AgentState(9, 43), TopicTail(9, 42, WHOLE, True), "t") == Resume(None, Progress(42), True)
    # empty batches advance the published tick without writing to the topic
    assert plan_resume(AgentState(12, 43), TopicTail(9, 42, WHOLE, True), "t") == Resume(None, Progress(42), True)


def test_resume_after_crash_between_publish_and_record():
    assert plan_resume(AgentState(9, 43), TopicTail(10, 50, WHOLE, True), "t") == Resume(10, Progress(50), True)
    assert plan_resume(AgentState(9, 43), TopicTail(10, 47, WHOLE, False), "t") == Resume(10, Progress(47), False)
    assert plan_resume(AgentState(9, 43), TopicTail(10, 47, 3, False), "t") == Resume(10, Progress(47, 3), False)
    # a heartbeat was published for tick 10 but not recorded
    assert plan_resume(AgentState(9, 43), TopicTail(10, 42, WHOLE, True), "t") == Resume(10, Progress(42), True)


@pytest.mark.parametrize(
    "state, tail, words",
    [
        (AgentState(9, 43), None, "is empty"),
        (AgentState(9, 43), TopicTail(9, 40, WHOLE, True), "lost or gained"),
        (AgentState(9, 43), TopicTail(9, 42, 2, False), "lost or gained"),
        (AgentState(9, 43), TopicTail(10, 30, WHOLE, True), "behind"),
    ],
)
def test_resume_refuses_a_topic_that_lost_data(state, tail, words):
    with pytest.raises(PositionError, match=words):
        plan_resume(state, tail, "pgfanout.source.x")


def test_mark_travels_in_a_record_header():
    from pgfanout.core.positions import Mark, mark_from_headers, mark_header

    mark = Mark(12, 3456, 2**31 - 1)
    assert mark_from_headers([("other", b"x"), *mark_header(mark)]) == mark
    assert mark_from_headers(None) is None and mark_from_headers([]) is None


def test_resume_across_generations():
    # the new primary of generation 2 went on after position 42; the heartbeat that opened it is the tail
    opened = TopicTail(20, 42, WHOLE, True, generation=2)
    assert plan_resume(AgentState(20, 43, generation=2), opened, "t") == Resume(None, Progress(42), True)
    with pytest.raises(PositionError, match="another database holds the primary role"):
        plan_resume(AgentState(19, 43, generation=1), opened, "t")
    with pytest.raises(PositionError, match="did not finish"):
        plan_resume(AgentState(20, 43, generation=3), opened, "t")
