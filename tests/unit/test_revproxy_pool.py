"""Upstream selection (pure, fake clock): round-robin, weights, client-IP affinity, failure marking, health."""

from collections import Counter

from revproxy.pool import Node, NodePool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def nodes(*weights: int) -> list[Node]:
    return [Node(f"n{i}:443", f"10.0.0.{i}", 443, weight=w) for i, w in enumerate(weights)]


def test_round_robin_spreads_evenly():
    pool = NodePool(nodes(1, 1, 1))
    firsts = [pool.plan("1.2.3.4")[0].key for _ in range(30)]
    assert Counter(firsts) == {"n0:443": 10, "n1:443": 10, "n2:443": 10}


def test_plan_lists_every_usable_node_once_for_failover():
    pool = NodePool(nodes(1, 1, 1))
    plan = pool.plan("1.2.3.4")
    assert sorted(n.key for n in plan) == ["n0:443", "n1:443", "n2:443"]


def test_weights_give_proportional_share():
    pool = NodePool(nodes(3, 1))
    firsts = Counter(pool.plan("x")[0].key for _ in range(40))
    assert firsts == {"n0:443": 30, "n1:443": 10}


def test_client_ip_affinity_keeps_a_client_on_its_node():
    pool = NodePool(nodes(1, 1, 1), balance="client_ip")
    assert len({pool.plan("198.51.100.7")[0].key for _ in range(20)}) == 1
    spread = {pool.plan(f"198.51.100.{i}")[0].key for i in range(60)}
    assert len(spread) == 3


def test_client_ip_affinity_moves_only_when_its_node_is_down():
    clock = Clock()
    pool = NodePool(nodes(1, 1, 1), balance="client_ip", clock=clock)
    before = {f"203.0.113.{i}": pool.plan(f"203.0.113.{i}")[0] for i in range(50)}
    down = pool.nodes[0]
    pool.mark_failed(down)
    for ip, node in before.items():
        if node is not down:
            assert pool.plan(ip)[0] is node


def test_failed_node_is_skipped_for_fail_timeout_then_probed():
    clock = Clock()
    pool = NodePool(nodes(1, 1), fail_timeout=10, clock=clock)
    pool.mark_failed(pool.nodes[0])
    assert [n.key for n in pool.plan("x")] == ["n1:443"]
    clock.now += 10
    assert len(pool.plan("x")) == 2


def test_all_down_gives_an_empty_plan():
    pool = NodePool(nodes(1, 1), clock=Clock())
    for n in pool.nodes:
        pool.mark_failed(n)
    assert pool.plan("x") == []


def test_health_check_marks_down_and_up():
    pool = NodePool(nodes(1, 1), clock=Clock())
    pool.set_health(pool.nodes[1], False)
    assert [n.key for n in pool.plan("x")] == ["n0:443"]
    pool.set_health(pool.nodes[1], True)
    assert len(pool.plan("x")) == 2


def test_replace_keeps_state_of_nodes_that_stay():
    clock = Clock()
    pool = NodePool(nodes(1, 1), clock=clock)
    kept = pool.nodes[1]
    pool.mark_failed(kept)
    pool.replace([Node("n1:443", "10.0.0.1", 443), Node("n9:443", "10.0.0.9", 443)])
    assert pool.nodes[0] is kept and not kept.usable(clock())
    assert [n.key for n in pool.plan("x")] == ["n9:443"]
