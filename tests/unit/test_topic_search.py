"""Finding the first record past a place in a topic: a binary search over what grows along it."""

from pgfanout.runtime.kafka import first_beyond


def search(places: list, target) -> int:
    """first_beyond over records whose places are given by offset (None: a record holding none)."""

    def first_known(start: int, stop: int):
        return next(((offset, places[offset]) for offset in range(start, stop) if places[offset] is not None), None)

    return first_beyond(0, len(places), target, first_known)


def test_reading_starts_right_after_the_last_record_at_or_below_the_position():
    places = [1, 2, None, 3, None, None, 4, 5]
    assert search(places, 0) == 0
    assert search(places, 2) == 2  # the record holding none after it is read (and passed over)
    assert search(places, 3) == 4
    assert search(places, 5) == len(places)
    assert search([], 7) == 0


def test_a_source_topic_is_searched_by_generation_then_position():
    """Generation 1 published 1..10; the primary it deposed had recorded 8. Generation 2 began at the new
    primary's position 3 and published 3..6. What generation 1 holds past 8 is at offsets 8 and 9."""
    generation_1 = [(1, position) for position in range(1, 11)]
    generation_2 = [(2, position) for position in range(3, 7)]
    places = generation_1 + generation_2
    assert search(places, (1, 8)) == 8
    assert search(places, (1, 10)) == 10  # nothing of generation 1 is past 10: generation 2 starts there
    assert search(places, (2, 4)) == 12
    # by position alone, the search lands in generation 2 (positions 3..6, all below 8) and passes over
    # offsets 8 and 9: what a deposed primary published and did not record would be reported never published
    assert search([position for _, position in places], 8) == len(places)
