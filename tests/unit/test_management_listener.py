"""The [management] table and the listener's HTTP resource, in memory (twisted.web's DummyRequest)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.test.requesthelper import DummyRequest

from appliance import stats
from appliance.config import ConfigError
from appliance.management import Figures, ManagementResource
from appliance.management_config import ManagementConfig, management_config_from_table


def test_defaults_listen_on_coturns_prometheus_port_for_loopback_only():
    config = management_config_from_table({}, "f.toml")
    assert config.listen == ("127.0.0.1", 9641)
    assert config.allows("127.0.0.1") and config.allows("127.9.9.9") and config.allows("::1")
    assert config.allows("::ffff:127.0.0.1")
    assert not config.allows("10.0.0.1") and not config.allows("2001:db8::1")


def test_empty_listen_turns_the_listener_off():
    assert management_config_from_table({"listen": ""}).listen is None


def test_allow_replaces_the_loopback_default():
    config = management_config_from_table({"allow": ["127.0.0.1/32", "10.40.0.0/24", "2001:db8::5"]})
    assert config.allows("127.0.0.1") and config.allows("10.40.0.200") and config.allows("2001:db8::5")
    assert not config.allows("127.0.0.2")
    assert not config.allows("::1")
    assert config.allows("::ffff:10.40.0.7")  # a dual-stack listener's view of an IPv4 client


@pytest.mark.parametrize(("table", "key", "problem"), [
    ({"listen": "127.0.0.1"}, "listen", "has no port"),
    ({"listen": "localhost:9641"}, "listen", "numeric IP"),
    ({"listen": 9641}, "listen", "expected"),
    ({"allow": "10.0.0.0/8"}, "allow", "a list"),
    ({"allow": ["10.0.0.0/33"]}, "allow", "not an address or CIDR"),
    ({"port": 1}, "port", "unknown key"),
])
def test_bad_values_are_one_line_naming_file_table_and_key(table, key, problem):
    with pytest.raises(ConfigError) as caught:
        management_config_from_table(table, "conf/x.toml")
    message = str(caught.value)
    assert message.startswith(f"conf/x.toml: [management] {key}: ")
    assert problem in message and "\n" not in message


def get(resource: ManagementResource, path: bytes, client: str = "127.0.0.1", method: bytes = b"GET"):
    request = DummyRequest([p for p in path.split(b"/") if p])
    request.path = path
    request.method = method
    request.client = (IPv6Address if ":" in client else IPv4Address)("TCP", client, 40000)
    body = resource.render(request)
    return request.responseCode or 200, request.responseHeaders.getRawHeaders(b"content-type")[0].decode(), body


@pytest.fixture
def resource(tmp_path):
    stats.write_snapshot(str(tmp_path), {
        "service": "relay", "worker": 0, "pid": 2**22 + 7, "time": 0,  # a worker that already died
        "counters": {"binding_requests": 4}, "gauges": {"allocations": {"udp": 9}}, "info": {},
    })
    stats.register_local("revproxy", 0, lambda: {"counters": {"requests": 3}, "gauges": {},
                                                  "info": {"nodes": [{"node": "127.0.0.1:1", "up": True}]}})
    yield ManagementResource(ManagementConfig(allow=(ipaddress.ip_network("127.0.0.1/32"),)),
                             Figures(str(tmp_path), started=0.0))
    stats.unregister_local("revproxy", 0)


def test_status_sums_the_spool_and_this_process(resource):
    code, content_type, body = get(resource, b"/status")
    assert code == 200 and content_type == "application/json"
    status = json.loads(body)
    assert status["relay"]["binding_requests"] == 4
    assert status["relay"]["allocations"] == 0  # the dead worker's allocations are gone with it
    assert status["relay"]["state"] == "not running"
    assert status["revproxy"]["requests"] == 3
    assert status["revproxy"]["nodes"] == [{"node": "127.0.0.1:1", "up": True, "requests": 0}]


def test_metrics_and_page_and_unknown_paths(resource):
    code, content_type, body = get(resource, b"/metrics")
    assert code == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert b"rpturn_stun_binding_requests_total 4.0" in body
    code, content_type, body = get(resource, b"/")
    assert code == 200 and content_type.startswith("text/html") and b"TURN relay" in body
    assert get(resource, b"/nope")[0] == 404
    assert get(resource, b"/status", method=b"POST")[0] == 405


def test_a_source_outside_allow_gets_403_and_no_figures(resource):
    code, _, body = get(resource, b"/metrics", client="127.0.0.2")
    assert code == 403 and b"rpturn_" not in body
    assert get(resource, b"/status", client="::ffff:127.0.0.1")[0] == 200


def test_publisher_writes_at_start_every_second_and_once_more_on_stop(tmp_path):
    from twisted.internet.task import Clock

    from appliance.publisher import StatsPublisher

    clock, counter = Clock(), {"n": 0}

    def take() -> dict:
        counter["n"] += 1
        return {"counters": {"requests": counter["n"]}, "gauges": {}, "info": {}}

    publisher = StatsPublisher("relay", 3, take, clock, directory=str(tmp_path))
    publisher.startService()
    [written] = stats.read_spool(str(tmp_path))
    assert (written["service"], written["worker"], written["counters"]) == ("relay", 3, {"requests": 1})
    assert [s["service"] for s in stats.local_snapshots()] == ["relay"]  # also readable in this process
    clock.advance(1.0)
    assert stats.read_spool(str(tmp_path))[0]["counters"] == {"requests": 3}  # (one taken by local_snapshots)
    publisher.stopService()
    assert stats.read_spool(str(tmp_path))[0]["counters"] == {"requests": 4}
    assert stats.local_snapshots() == [] and not clock.getDelayedCalls()
