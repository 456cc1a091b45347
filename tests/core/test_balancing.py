"""Balancing strategies: each sentence of the kairos_core.balancing docstring, pinned."""

from collections import Counter

import pytest

from kairos_core.balancing import (
    STRATEGIES,
    BackendRef,
    Balancer,
    InFlight,
    IpHash,
    LeastConnections,
    NoCandidates,
    Random,
    RoundRobin,
    SmoothWeighted,
    make_balancer,
)


def refs(*weights: int) -> list[BackendRef]:
    return [BackendRef(f"http://127.0.0.1:{8080 + i}", weight) for i, weight in enumerate(weights)]


def picks(balancer: Balancer, candidates: list[int], n: int) -> list[int]:
    return [balancer.pick(candidates) for _ in range(n)]


CLIENTS = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(10_000)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty_candidates_raise_no_candidates(strategy: str) -> None:
    with pytest.raises(NoCandidates):
        make_balancer(strategy, refs(1, 1), seed=1).pick([], "10.0.0.1")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_single_candidate_is_always_picked(strategy: str) -> None:
    balancer = make_balancer(strategy, refs(5, 1, 1), seed=1)
    assert {balancer.pick([2], f"10.0.0.{i}") for i in range(50)} == {2}


def test_make_balancer_names_match_strategies() -> None:
    assert [make_balancer(s, refs(1)).name for s in STRATEGIES] == list(STRATEGIES)


def test_make_balancer_rejects_unknown_strategy_listing_allowed() -> None:
    with pytest.raises(ValueError, match="least_conn") as info:
        make_balancer("least_conn", refs(1))
    for name in STRATEGIES:
        assert name in str(info.value)


def test_backend_weight_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="weight must be >= 1"):
        BackendRef("http://127.0.0.1:8080", 0)


def test_round_robin_strict_rotation() -> None:
    assert picks(RoundRobin(), [0, 1, 2], 6) == [0, 1, 2, 0, 1, 2]


def test_round_robin_skips_ineligible_and_continues_from_last_pick() -> None:
    balancer = RoundRobin()
    assert balancer.pick([0, 1, 2]) == 0
    assert picks(balancer, [0, 2], 3) == [2, 0, 2]
    assert picks(balancer, [0, 1, 2], 3) == [0, 1, 2]
    assert balancer.pick([0, 2]) == 0


def test_weighted_two_to_one_is_exact_and_interleaved() -> None:
    sequence = picks(SmoothWeighted(refs(2, 1)), [0, 1], 30)
    assert sequence[:3] == [0, 1, 0]
    assert sequence == [0, 1, 0] * 10
    assert Counter(sequence) == {0: 20, 1: 10}
    assert all(len(set(sequence[i : i + 3])) > 1 for i in range(28))


def test_weighted_five_one_one_matches_nginx_sequence() -> None:
    assert picks(SmoothWeighted(refs(5, 1, 1)), [0, 1, 2], 7) == [0, 0, 1, 0, 2, 0, 0]


def test_weighted_equal_weights_rotate() -> None:
    assert picks(SmoothWeighted(refs(3, 3, 3)), [0, 1, 2], 6) == [0, 1, 2, 0, 1, 2]


def test_weighted_ineligible_backend_does_not_take_part() -> None:
    balancer = SmoothWeighted(refs(2, 1, 1))
    assert picks(balancer, [0, 2], 3) == [0, 2, 0]
    assert Counter(picks(balancer, [0, 1, 2], 40)) == {0: 20, 1: 10, 2: 10}


def test_in_flight_counts_and_never_goes_below_zero() -> None:
    in_flight = InFlight()
    in_flight.acquire("a")
    in_flight.acquire("a")
    in_flight.acquire("b")
    assert (in_flight.get("a"), in_flight.total(), in_flight.snapshot()) == (2, 3, {"a": 2, "b": 1})
    in_flight.release("b")
    in_flight.release("b")
    in_flight.release("never-acquired")
    assert (in_flight.get("b"), in_flight.total(), in_flight.snapshot()) == (0, 2, {"a": 2})


def test_least_connections_follows_in_flight() -> None:
    backends = refs(1, 1, 1)
    in_flight = InFlight()
    balancer = make_balancer("least_connections", backends, in_flight=in_flight)
    in_flight.acquire(backends[0].key)
    in_flight.acquire(backends[0].key)
    in_flight.acquire(backends[1].key)
    assert balancer.pick([0, 1, 2]) == 2
    assert balancer.pick([0, 1]) == 1
    for _ in range(3):
        in_flight.acquire(backends[2].key)
    assert balancer.pick([0, 1, 2]) == 1
    in_flight.release(backends[0].key)
    in_flight.release(backends[0].key)
    assert balancer.pick([0, 1, 2]) == 0


def test_least_connections_ties_rotate() -> None:
    balancer = LeastConnections(refs(1, 1, 1), InFlight())
    assert picks(balancer, [0, 1, 2], 6) == [0, 1, 2, 0, 1, 2]


def test_random_is_reproducible_under_seed() -> None:
    def draws(seed: int) -> list[int]:
        balancer = Random(refs(1, 2, 1), seed=seed)
        return [balancer.pick([0, 1, 2]) for _ in range(200)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_random_is_roughly_uniform_with_equal_weights() -> None:
    balancer = Random(refs(1, 1, 1), seed=42)
    counts = Counter(balancer.pick([0, 1, 2]) for _ in range(6_000))
    assert all(1_800 <= counts[i] <= 2_200 for i in range(3))


def test_random_is_weighted_and_respects_candidates() -> None:
    balancer = Random(refs(3, 5, 1), seed=42)
    counts = Counter(balancer.pick([0, 2]) for _ in range(4_000))
    assert set(counts) == {0, 2}
    assert 2_800 <= counts[0] <= 3_200


def test_ip_hash_is_stable_per_client_key() -> None:
    backends = refs(1, 1, 1, 1)
    first, second = IpHash(backends), IpHash(backends)
    assert [first.pick([0, 1, 2, 3], c) for c in CLIENTS[:200]] == [
        second.pick([0, 1, 2, 3], c) for c in CLIENTS[:200]
    ]
    assert len({first.pick([0, 1, 2, 3], "192.168.1.9") for _ in range(20)}) == 1


def test_ip_hash_spreads_keys_evenly() -> None:
    balancer = IpHash(refs(1, 1, 1, 1))
    counts = Counter(balancer.pick([0, 1, 2, 3], c) for c in CLIENTS)
    assert all(2_000 <= counts[i] <= 3_000 for i in range(4))


def test_ip_hash_adding_a_backend_moves_only_its_share_to_it() -> None:
    before = IpHash(refs(1, 1, 1, 1))
    after = IpHash(refs(1, 1, 1, 1, 1))
    moved = {
        c: after.pick([0, 1, 2, 3, 4], c)
        for c in CLIENTS
        if before.pick([0, 1, 2, 3], c) != after.pick([0, 1, 2, 3, 4], c)
    }
    assert 1_500 <= len(moved) <= 2_500
    assert set(moved.values()) == {4}


def test_ip_hash_removing_a_backend_moves_only_its_keys() -> None:
    backends = refs(1, 1, 1, 1)
    full = IpHash(backends)
    without_two = IpHash([b for i, b in enumerate(backends) if i != 2])
    to_old_index = [0, 1, 3]
    for client in CLIENTS:
        old = full.pick([0, 1, 2, 3], client)
        if old != 2:
            assert to_old_index[without_two.pick([0, 1, 2], client)] == old
            assert full.pick([0, 1, 3], client) == old
        else:
            assert full.pick([0, 1, 3], client) in to_old_index


def test_ip_hash_is_weight_aware() -> None:
    balancer = IpHash(refs(3, 1))
    counts = Counter(balancer.pick([0, 1], c) for c in CLIENTS)
    assert 7_000 <= counts[0] <= 8_000


def test_ip_hash_without_client_key_picks_first_candidate() -> None:
    balancer = IpHash(refs(1, 1, 1))
    assert [balancer.pick([1, 2]), balancer.pick([0, 2]), balancer.pick([2])] == [1, 0, 2]
