"""Who asks a unit when runs overlap: the rule every run applies to the claims it reads."""

from __future__ import annotations

from pipeline.runs.claims import CLAIM_FILES, Claim, _chunks, decide, unit_of
from pipeline.runs.plan import Batch, Entry


def test_the_first_claim_of_a_live_run_wins_and_both_runs_agree() -> None:
    claims = [Claim("a.jpg", "run-1", 3, True), Claim("a.jpg", "run-2", 5, True),
              Claim("b.jpg", "run-2", 5, True), Claim("b.jpg", "run-1", 7, True)]
    one, two = decide(["a.jpg", "b.jpg"], claims, "run-1"), decide(["a.jpg", "b.jpg"],
                                                                   claims, "run-2")
    assert (one.mine, one.held) == ({"a.jpg"}, {"b.jpg": "run-2"})
    assert (two.mine, two.held) == ({"b.jpg"}, {"a.jpg": "run-1"})


def test_a_run_ranks_by_its_first_claim_so_claiming_again_loses_nothing() -> None:
    # run-1 claimed first (3), run-2 next (5), run-1 again in its tail (9).
    claims = [Claim("a.jpg", "run-1", 3, True), Claim("a.jpg", "run-2", 5, True)]
    assert decide(["a.jpg"], claims, "run-1").mine == {"a.jpg"}
    assert decide(["a.jpg"], claims, "run-2").held == {"a.jpg": "run-1"}


def test_a_unit_first_claimed_by_a_run_now_gone_is_settled_not_held() -> None:
    claims = [Claim("a.jpg", "dead", 2, False), Claim("a.jpg", "run-1", 4, True),
              Claim("b.jpg", "run-1", 4, True), Claim("b.jpg", "dead", 6, False)]
    decision = decide(["a.jpg", "b.jpg"], claims, "run-1")
    assert decision.settled == {"a.jpg"}  # asked only if still unanswered
    assert decision.mine == {"b.jpg"} and not decision.held


def test_the_earliest_live_claim_beats_a_gone_one_before_it() -> None:
    claims = [Claim("a.jpg", "dead", 1, False), Claim("a.jpg", "run-2", 2, True),
              Claim("a.jpg", "run-3", 3, True), Claim("a.jpg", "run-1", 4, True)]
    assert decide(["a.jpg"], claims, "run-1").held == {"a.jpg": "run-2"}
    assert decide(["a.jpg"], claims, "run-3").held == {"a.jpg": "run-2"}


def test_an_unclaimed_unit_is_mine() -> None:
    assert decide(["a.jpg"], [], "run-1").mine == {"a.jpg"}


def test_a_group_is_claimed_whole_and_files_alone() -> None:
    member = Entry("file:/in/a/1.jpg", 1, 0, False, group_key="a", fingerprint="f")
    alone = Entry("file:/in/b.jpg", 1, 0, False)
    assert unit_of(member) == "group:a" and unit_of(alone) == "file:/in/b.jpg"


def test_claims_are_made_a_chunk_of_whole_batches_at_a_time() -> None:
    def batch(n: int, size: int) -> Batch:
        return Batch(n, tuple(Entry(f"{n}-{i}", 1, 0, False) for i in range(size)))

    third = CLAIM_FILES // 3 + 1
    small = [batch(n, third) for n in range(1, 6)]  # three batches fill a chunk
    assert [[b.number for b in c] for c in _chunks(iter(small))] == [[1, 2, 3], [4, 5]]
    large = [batch(n, CLAIM_FILES * 2) for n in range(1, 3)]
    assert [[b.number for b in c] for c in _chunks(iter(large))] == [[1], [2]]
