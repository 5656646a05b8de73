"""The `stored` confirmation payload: ranges in, ranges out, bad payloads named."""

from __future__ import annotations

import random

import orjson
import pytest

from contract.stored import MAX_RANGES, StoredError, covers, encode_stamped, encode_stored, parse_stored, stamp, to_ranges


@pytest.mark.parametrize(
    ("seqs", "ranges"),
    [
        ([], []),
        ([5], [(5, 5)]),
        ([3, 1, 2], [(1, 3)]),
        ([1, 2, 4, 5, 5, 9], [(1, 2), (4, 5), (9, 9)]),
    ],
)
def test_to_ranges_merges_runs(seqs: list[int], ranges: list[tuple[int, int]]) -> None:
    assert to_ranges(seqs) == ranges


def test_round_trip() -> None:
    r = [(0, 10), (12, 12), (2**53 - 2, 2**53 - 1)]
    assert parse_stored(encode_stored(r)) == (r, None)
    assert encode_stored([(40, 52)]) == b'{"v":1,"seq":[[40,52]]}'
    assert parse_stored(encode_stored([(1, 2)], t=1764000000.25)) == ([(1, 2)], 1764000000.25)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"nope", "not JSON"),
        (b'{"v":2,"seq":[]}', '"v": 1'),
        (b'{"v":1,"seq":[[3,1]]}', "lo <= hi"),
        (b'{"v":1,"seq":[[1,5],[5,6]]}', "disjoint"),
        (b'{"v":1,"seq":[[1,2.5]]}', "integers"),
        (b'{"v":1,"seq":[[-1,2]]}', "integers"),
        (b'{"v":1,"seq":[[1,2,3]]}', "[lo, hi]"),
        (b'{"v":1,"seq":[],"t":"noon"}', "Unix time"),
        (b'{"v":1,"seq":[],"t":-5}', "Unix time"),
    ],
)
def test_bad_payloads_say_what_is_wrong(payload: bytes, words: str) -> None:
    with pytest.raises(StoredError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_stored(payload)


def test_the_bound_holds_both_ways() -> None:
    too_many = [(2 * i, 2 * i) for i in range(MAX_RANGES + 1)]
    with pytest.raises(StoredError):
        encode_stored(too_many)
    with pytest.raises(StoredError):
        parse_stored(b'{"v":1,"seq":' + str([[a, b] for a, b in too_many]).replace(" ", "").encode() + b"}")


def test_covers() -> None:
    r = [(1, 3), (7, 7)]
    assert [s for s in range(10) if covers(r, s)] == [1, 2, 3, 7]


def test_the_fast_encoding_is_exactly_the_json_of_the_document() -> None:
    """Built by hand for speed (once per device per round), byte for byte what orjson makes of the document."""
    rng = random.Random(18)
    for _ in range(500):
        n = rng.choice([0, 1, 1, 2, 5, MAX_RANGES])
        edges = sorted(rng.sample(range(2**53), 2 * n))
        ranges = [(edges[2 * i], edges[2 * i + 1]) for i in range(n)]
        t = rng.choice([None, 0, 1764000000.25, rng.uniform(1.7e9, 1.9e9), float(rng.randrange(2**33))])
        doc: dict[str, object] = {"v": 1, "seq": [[lo, hi] for lo, hi in ranges]}
        if t is not None:
            doc["t"] = round(t, 3)
        assert encode_stored(ranges, t) == encode_stamped(ranges, stamp(t)) == orjson.dumps(doc)
        assert parse_stored(encode_stored(ranges, t)) == (ranges, None if t is None else round(t, 3))
    with pytest.raises(StoredError):
        encode_stored([(2 * i, 2 * i) for i in range(MAX_RANGES + 1)])
