"""The node balancer (pure, fake clock): round-robin, weights, client-IP affinity, failure marking, health."""

from collections import Counter

from revproxy.balancer import Balancer, Node
from tests.support.clock import FakeClock


def nodes(*weights: int) -> list[Node]:
    return [Node(f"n{i}:443", f"10.0.0.{i}", 443, weight=w) for i, w in enumerate(weights)]


def test_round_robin_spreads_evenly():
    balancer = Balancer(nodes(1, 1, 1))
    firsts = [balancer.plan("1.2.3.4")[0].key for _ in range(30)]
    assert Counter(firsts) == {"n0:443": 10, "n1:443": 10, "n2:443": 10}


def test_plan_lists_every_usable_node_once_for_failover():
    balancer = Balancer(nodes(1, 1, 1))
    plan = balancer.plan("1.2.3.4")
    assert sorted(n.key for n in plan) == ["n0:443", "n1:443", "n2:443"]


def test_weights_give_proportional_share():
    balancer = Balancer(nodes(3, 1))
    firsts = Counter(balancer.plan("x")[0].key for _ in range(40))
    assert firsts == {"n0:443": 30, "n1:443": 10}


def test_client_ip_affinity_keeps_a_client_on_its_node():
    balancer = Balancer(nodes(1, 1, 1), balance="client_ip")
    assert len({balancer.plan("198.51.100.7")[0].key for _ in range(20)}) == 1
    spread = {balancer.plan(f"198.51.100.{i}")[0].key for i in range(60)}
    assert len(spread) == 3


def test_client_ip_affinity_moves_only_when_its_node_is_down():
    clock = FakeClock(100.0)
    balancer = Balancer(nodes(1, 1, 1), balance="client_ip", clock=clock)
    before = {f"203.0.113.{i}": balancer.plan(f"203.0.113.{i}")[0] for i in range(50)}
    down = balancer.nodes[0]
    balancer.mark_failed(down)
    for ip, node in before.items():
        if node is not down:
            assert balancer.plan(ip)[0] is node


def test_failed_node_is_skipped_for_fail_timeout_then_probed():
    clock = FakeClock(100.0)
    balancer = Balancer(nodes(1, 1), fail_timeout=10, clock=clock)
    balancer.mark_failed(balancer.nodes[0])
    assert [n.key for n in balancer.plan("x")] == ["n1:443"]
    clock.now += 10
    assert len(balancer.plan("x")) == 2


def test_all_down_gives_an_empty_plan():
    balancer = Balancer(nodes(1, 1), clock=FakeClock(100.0))
    for n in balancer.nodes:
        balancer.mark_failed(n)
    assert balancer.plan("x") == []


def test_health_check_marks_down_and_up():
    balancer = Balancer(nodes(1, 1), clock=FakeClock(100.0))
    balancer.set_health(balancer.nodes[1], False)
    assert [n.key for n in balancer.plan("x")] == ["n0:443"]
    balancer.set_health(balancer.nodes[1], True)
    assert len(balancer.plan("x")) == 2


def test_replace_keeps_state_of_nodes_that_stay():
    clock = FakeClock(100.0)
    balancer = Balancer(nodes(1, 1), clock=clock)
    kept = balancer.nodes[1]
    balancer.mark_failed(kept)
    balancer.replace([Node("n1:443", "10.0.0.1", 443), Node("n9:443", "10.0.0.9", 443)])
    assert balancer.nodes[0] is kept and not kept.usable(clock())
    assert [n.key for n in balancer.plan("x")] == ["n9:443"]
