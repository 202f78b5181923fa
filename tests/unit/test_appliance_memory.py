"""Memory handed back after a burst of connections: the trigger's arithmetic, and the trim itself runs."""

from appliance import memory
from appliance.memory import BurstWatch


class Calls:
    def __init__(self) -> None:
        self.pending: list = []

    def __call__(self, delay: float, f) -> None:
        self.pending.append(f)


def test_a_trim_is_scheduled_once_when_a_burst_has_halved():
    later = Calls()
    watch = BurstWatch(later, burst=1000)
    for n in range(1, 1201):
        watch.opened(n)
    for n in range(1199, 600, -1):
        watch.closed(n)
    assert later.pending == []
    watch.closed(600)
    watch.closed(599)
    assert len(later.pending) == 1
    later.pending[0]()
    watch.closed(10)
    assert len(later.pending) == 1  # the high mark was reset: the next burst starts from here


def test_small_ups_and_downs_never_trim():
    later = Calls()
    watch = BurstWatch(later, burst=1000)
    for _ in range(5):
        watch.opened(900)
        watch.closed(1)
    assert later.pending == []


def test_trim_is_glibcs_malloc_trim_and_runs_here():
    # The appliance runs on Debian (glibc): finding no malloc_trim would silently turn the trim into a no-op.
    assert memory.trim.__name__ == "release"
    memory.trim()
