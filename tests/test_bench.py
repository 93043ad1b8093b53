"""The benchmark suite in bench/: it runs at a tiny scale, and its parsers read real tool output.

No figure is asserted beyond "more than zero": these tests check that the suite works, not how
fast anything is. The end-to-end tests need wrk and gtlsclient (ngtcp2-client); each is skipped
without its tool on a developer's machine, but fails in CI (CI=true), where
scripts/install-tools.sh installs both.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
from bench import apps, report
from bench.parsers import (
    gtlsclient_errors,
    parse_count_response,
    parse_gtlsclient,
    parse_h2load,
    parse_lscpu,
    parse_proc_stat,
    parse_proc_status,
    parse_wrk,
    percentile,
    percentiles_from_h2load_log,
    time_to_ms,
)
from bench.scenarios import SCENARIOS, SCENARIOS_BY_NAME
from bench.servers import (
    H3,
    H3_MAX_STREAMS,
    SERVERS,
    SERVERS_BY_NAME,
    WS,
    Launch,
    command,
    gated_features,
    has_flag,
)
from bench.wsclient import (
    EchoConnection,
    Stats,
    client_frame,
    handshake_problem,
    handshake_request,
    mask_payload,
)

ROOT = Path(__file__).resolve().parent.parent

# Captured from wrk 4.1.0 (Debian) against multicorn, granian and a 404 route.
WRK_GET = """\
Running 2s test @ http://127.0.0.1:9001/10k
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.49ms    1.20ms  18.30ms   86.78%
    Req/Sec    11.69k     0.89k   12.62k    90.00%
  Latency Distribution
     50%    5.30ms
     75%    5.62ms
     90%    6.39ms
     99%   10.52ms
  23275 requests in 2.01s, 230.05MB read
Requests/sec:  11599.33
Transfer/sec:    114.65MB
"""

WRK_MICROSECONDS = """\
Running 1s test @ http://127.0.0.1:9040/small
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   150.36us   66.81us   1.70ms   94.65%
    Req/Sec    13.33k     1.34k   14.77k    72.73%
  Latency Distribution
     50%  144.00us
     75%  162.00us
     90%  189.00us
     99%  294.00us
  14577 requests in 1.10s, 1.81MB read
Requests/sec:  13251.34
Transfer/sec:      1.64MB
"""

WRK_404 = """\
Running 1s test @ http://127.0.0.1:9001/missing
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.10ms    2.50ms  21.53ms   84.13%
    Req/Sec    12.70k     2.81k   17.47k    60.00%
  Latency Distribution
     50%    4.32ms
     75%    6.12ms
     90%    7.53ms
     99%   15.58ms
  12653 requests in 1.00s, 1.64MB read
  Non-2xx or 3xx responses: 12653
Requests/sec:  12608.30
Transfer/sec:      1.64MB
"""

# The socket-error line in wrk's format (src/wrk.c), with latencies in seconds.
WRK_SOCKET_ERRORS = """\
Running 10s test @ http://127.0.0.1:8000/sleep
  1 threads and 512 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02s   250.00ms   2.00s    70.00%
    Req/Sec   500.00    100.00     1.00k    60.00%
  Latency Distribution
     50%    1.00s
     75%    1.20s
     90%    1.50s
     99%    1.90s
  5000 requests in 10.00s, 600.00KB read
  Socket errors: connect 3, read 12, write 0, timeout 34
Requests/sec:    499.90
Transfer/sec:     60.00KB
"""

WRK_REFUSED = "unable to connect to 127.0.0.1:9999 Connection refused\n"

# Captured from h2load (nghttp2 1.52.0) against multicorn over TLS.
H2LOAD_TLS = """\
starting benchmark...
spawning thread #0: 8 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 12% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 4232.00 req/s, 41.42MB/s
requests: 8464 total, 8592 started, 8464 done, 8464 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 8464 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 82.84MB (86867336) total, 42.03KB (43040) headers (space savings 94.86%), 82.66MB (86671360) data
                     min         max         mean         sd        +/- sd
time for request:     7.19ms     73.19ms     29.79ms      3.67ms    90.12%
time for connect:     2.62ms     22.55ms     17.00ms      6.30ms    87.50%
time to 1st byte:     9.86ms     67.52ms     51.41ms     18.10ms    87.50%
req/s           :     527.57      535.55      528.65        2.79    87.50%
"""  # noqa: E501 - verbatim tool output

# Captured against Hypercorn over h2c: a few streams fail when the clients are stopped.
H2LOAD_H2C_FAILURES = """\
Application protocol: h2c
finished in 1.00s, 2002.00 req/s, 19.61MB/s
requests: 2005 total, 2010 started, 2005 done, 2002 succeeded, 3 failed, 3 errored, 0 timeout
status codes: 2002 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 19.61MB (20563016) total, 10.99KB (11254) headers (space savings 94.82%), 19.55MB (20500480) data
                     min         max         mean         sd        +/- sd
time for request:     1.23ms      9.80ms      3.95ms    812us    75.00%
"""  # noqa: E501 - verbatim tool output

H2LOAD_REFUSED = """\
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 0.00 req/s, 0B/s
requests: 0 total, 0 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
"""


# Captured from gtlsclient (ngtcp2-client 0.12.1, Debian) against Hypercorn over HTTP/3, without
# -q but with --no-quic-dump --no-http-dump: two requests (its packet log lines trimmed).
GTLSCLIENT_PROBE = """\
http: control stream=2
http: QPACK streams encoder=6 decoder=a
QUIC handshake has completed
Negotiated cipher suite is AES-256-GCM
Negotiated ALPN is h3
http: stream 0x0 submit request headers
[:method: GET]
[:path: /10k]
I00000028 0xacf30454e0fcc0d0 frm rx 12 1RTT STREAM(0x0e) id=0x0 fin=0 offset=8168 len=1158 uni=0
http: stream 0x0 response headers started
http: stream 0x0 [:status: 200]
http: stream 0x0 [content-length: 10240]
http: stream 0x0 [server: hypercorn-h3]
http: stream 0x0 headers ended
HTTP stream 0 closed with error code 256
http: stream 0x4 response headers started
http: stream 0x4 [:status: 200]
HTTP stream 4 closed with error code 256
"""

# What a quiet gtlsclient prints when no server answers (its exit status is still 0).
GTLSCLIENT_NO_SERVER = "ngtcp2_conn_handle_expiry: ERR_IDLE_CLOSE\n"


def test_time_units():
    assert time_to_ms("5.49ms") == pytest.approx(5.49)
    assert time_to_ms("150.36us") == pytest.approx(0.15036)
    assert time_to_ms("1.02s") == pytest.approx(1020.0)
    assert time_to_ms("2m") == pytest.approx(120_000.0)
    with pytest.raises(ValueError):
        time_to_ms("fast")


def test_wrk_output():
    result = parse_wrk(WRK_GET)
    assert result["requests_per_s"] == pytest.approx(11599.33)
    assert result["requests"] == 23275
    assert result["seconds"] == pytest.approx(2.01)
    assert result["latency_avg_ms"] == pytest.approx(5.49)
    assert result["latency_stdev_ms"] == pytest.approx(1.20)
    assert result["latency_max_ms"] == pytest.approx(18.30)
    assert result["latency_p50_ms"] == pytest.approx(5.30)
    assert result["latency_p99_ms"] == pytest.approx(10.52)
    assert result["errors"] == 0


def test_wrk_microseconds():
    result = parse_wrk(WRK_MICROSECONDS)
    assert result["latency_avg_ms"] == pytest.approx(0.15036)
    assert result["latency_max_ms"] == pytest.approx(1.70)
    assert result["latency_p99_ms"] == pytest.approx(0.294)
    assert result["seconds"] == pytest.approx(1.10)


def test_wrk_non_2xx_and_socket_errors():
    assert parse_wrk(WRK_404)["non_2xx"] == 12653
    assert parse_wrk(WRK_404)["errors"] == 12653
    result = parse_wrk(WRK_SOCKET_ERRORS)
    assert result["socket_errors"] == {"connect": 3, "read": 12, "write": 0, "timeout": 34}
    assert result["errors"] == 49
    assert result["latency_avg_ms"] == pytest.approx(1020.0)
    assert result["latency_p99_ms"] == pytest.approx(1900.0)


def test_wrk_without_result():
    result = parse_wrk(WRK_REFUSED)
    assert result["requests_per_s"] is None
    assert result["latency_p99_ms"] is None


def test_h2load_output():
    result = parse_h2load(H2LOAD_TLS)
    assert result["requests_per_s"] == pytest.approx(4232.0)
    assert result["seconds"] == pytest.approx(2.0)
    assert result["requests"] == 8464
    assert result["succeeded"] == 8464
    assert result["status"] == {"2xx": 8464, "3xx": 0, "4xx": 0, "5xx": 0}
    assert result["latency_avg_ms"] == pytest.approx(29.79)
    assert result["latency_max_ms"] == pytest.approx(73.19)
    assert result["protocol"] == "h2"
    assert result["errors"] == 0


def test_h2load_failures_and_refusal():
    result = parse_h2load(H2LOAD_H2C_FAILURES)
    assert result["protocol"] == "h2c"
    assert (result["failed"], result["errored"]) == (3, 3)
    assert result["errors"] == 3
    assert result["latency_avg_ms"] == pytest.approx(3.95)
    refused = parse_h2load(H2LOAD_REFUSED)
    assert refused["requests_per_s"] == 0.0
    assert refused["requests"] == 0
    assert refused["protocol"] is None


def test_h2load_log_percentiles():
    start = 1795641808386093
    lines = [f"{start + micros}\t200\t{micros}\n" for micros in range(1000, 101000, 1000)]
    lines.append("garbage\n")
    result = percentiles_from_h2load_log(lines)
    assert result["latency_p50_ms"] == pytest.approx(50.0)
    assert result["latency_p99_ms"] == pytest.approx(99.0)
    assert result["latency_avg_ms"] == pytest.approx(50.5)
    assert result["active_s"] == pytest.approx(0.199)  # first start +1 ms, last end +200 ms
    assert percentiles_from_h2load_log([])["latency_p99_ms"] is None
    assert percentile([1.0], 0.99) == 1.0


def test_gtlsclient_output():
    seen = parse_gtlsclient(GTLSCLIENT_PROBE)
    assert seen == {"alpn": "h3", "statuses": {"200": 2}, "errors": []}
    refused = parse_gtlsclient(GTLSCLIENT_NO_SERVER)
    assert refused["alpn"] is None and not refused["statuses"]
    assert refused["errors"] == ["ngtcp2_conn_handle_expiry: ERR_IDLE_CLOSE"]
    assert gtlsclient_errors(GTLSCLIENT_NO_SERVER + "\n") == refused["errors"]
    assert gtlsclient_errors("") == []


def test_count_response():
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 18\r\n\r\n" + b'{"2": 3, "3": 512}'
    assert parse_count_response(raw) == {"2": 3, "3": 512}
    for bad in (
        b"HTTP/1.1 404 Not Found\r\n\r\nnot found",
        b"HTTP/1.1 200 OK\r\n\r\n[1]",
        b"HTTP/1.1 200 OK\r\n\r\n{",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5",  # the head only
    ):
        with pytest.raises(ValueError):
            parse_count_response(bad)


def test_app_counts_10k_responses_per_http_version():
    async def get(path: str, version: str) -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "http_version": version}
        await apps.app(scope, receive, send)
        return sent

    def count() -> dict[str, int]:
        start, body = asyncio.run(get("/count", "1.1"))
        assert start["status"] == 200
        assert dict(start["headers"])[b"content-length"] == str(len(body["body"])).encode()
        return cast(dict[str, int], json.loads(body["body"]))

    before = count()
    for version in ("3", "3", "2"):
        assert len(asyncio.run(get("/10k", version))[1]["body"]) == 10240
    asyncio.run(get("/small", "3"))  # only GET /10k is counted
    after = count()
    assert after.get("3", 0) - before.get("3", 0) == 2
    assert after.get("2", 0) - before.get("2", 0) == 1


def test_h3_rows_and_commands():
    scenario = SCENARIOS_BY_NAME["h3-get"]
    assert (scenario.protocol, scenario.tool, scenario.path, scenario.tls) == (
        H3,
        "gtlsclient",
        "/10k",
        True,
    )
    # multicorn measures HTTP/3 once its --help shows --quic-bind; Hypercorn once aioquic imports.
    multicorn = SERVERS_BY_NAME["multicorn-asyncio"]
    assert H3 not in gated_features(multicorn, "  --ws-per-message-deflate\n")[0]
    assert H3 in gated_features(multicorn, "  --ws-per-message-deflate\n  --quic-bind ADDR\n")[0]
    hypercorn = SERVERS_BY_NAME["hypercorn-trio"]
    features, missing = gated_features(hypercorn, None, {"aioquic": "ModuleNotFoundError: x"})
    assert H3 not in features and "aioquic" in missing[H3]
    assert H3 in gated_features(hypercorn, None, {})[0]
    launch = Launch(8443, H3, Path("c.pem"), Path("k.pem"))
    for name in ("multicorn-trio", "hypercorn-uvloop"):
        argv = command(SERVERS_BY_NAME[name], Path("/v"), launch)
        assert argv[argv.index("--quic-bind") + 1] == "127.0.0.1:8443"
        assert argv[argv.index("--bind") + 1] == "127.0.0.1:8443"  # TCP stays, for /count
        assert "--certfile" in argv and "--keyfile" in argv
    argv = command(multicorn, Path("/v"), launch)
    assert argv[argv.index("--quic-max-concurrent-streams") + 1] == str(H3_MAX_STREAMS)
    h2 = command(multicorn, Path("/v"), Launch(8443, "h2-tls", Path("c.pem"), Path("k.pem")))
    assert "--quic-bind" not in h2


def test_proc_and_lscpu_parsers():
    status = "Name:\tpython3\nVmHWM:\t   60000 kB\nVmRSS:\t   51200 kB\nThreads:\t2\n"
    assert parse_proc_status(status) == {"VmHWM": 60000, "VmRSS": 51200}
    stat = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 40 0 0 20 0 2 0"
    assert parse_proc_stat(stat) == {"ppid": 1, "pgrp": 1234, "utime": 250, "stime": 40}
    lscpu = "Architecture:   x86_64\nCPU(s):  2\nModel name:   AMD EPYC\n"
    assert parse_lscpu(lscpu)["Model name"] == "AMD EPYC"


def test_tables_are_data_driven():
    assert len({server.name for server in SERVERS}) == len(SERVERS)
    assert len({scenario.name for scenario in SCENARIOS}) == len(SCENARIOS)
    # Every multicorn row lists WebSocket, measured only once its --help shows the ws options.
    for server in SERVERS:
        if server.is_multicorn:
            assert WS in server.features
            assert (WS, "--ws-per-message-deflate") in server.feature_flags
    assert SERVERS_BY_NAME["multicorn-httptools"].flags == ("--http",)
    assert has_flag("  [--http {h11,httptools}]", "--http")
    assert not has_flag("  [--http2-max-frame-size N] [--h2c {off}]", "--http")
    launch = Launch(8000, "h2-tls", Path("c.pem"), Path("k.pem"))
    argv = command(SERVERS_BY_NAME["multicorn-trio"], Path("/venv"), launch)
    assert argv[:2] == ["/venv/bin/multicorn", "bench.apps:app"]
    assert "--certfile" in argv and "trio" in argv


def test_ws_features_follow_the_help_text():
    server = SERVERS_BY_NAME["multicorn-uvloop"]
    features, missing = gated_features(server, "  --http {auto,h11,httptools}\n")
    assert WS not in features and "h1" in features
    assert "--ws-per-message-deflate" in missing[WS]
    help_text = "  --ws-per-message-deflate, --no-ws-per-message-deflate\n  --quic-bind ADDRESS\n"
    assert gated_features(server, help_text) == (server.features, {})
    # Peers have no gate: their rows are measured on what they list.
    assert gated_features(SERVERS_BY_NAME["uvicorn-wsproto"], "") == (frozenset({WS}), {})


def test_ws_scenarios_and_server_flags():
    one_mib = SCENARIOS_BY_NAME["ws-echo-1m"]
    assert (one_mib.message_size, one_mib.binary, one_mib.headline) == (1 << 20, True, "mib_per_s")
    # Under the 16 MiB default of multicorn, Uvicorn (--ws-max-size) and Hypercorn.
    assert one_mib.message_size < 16 * 1024 * 1024
    idle = SCENARIOS_BY_NAME["ws-idle-memory"]
    assert idle.measures_idle_memory and not idle.higher_is_better
    assert SCENARIOS_BY_NAME["idle-memory"].measures_idle_memory
    assert not SCENARIOS_BY_NAME["ws-echo"].measures_idle_memory
    wsproto = command(SERVERS_BY_NAME["uvicorn-wsproto"], Path("/v"), Launch(8000, WS))
    assert wsproto[wsproto.index("--ws") + 1] == "wsproto"
    daphne_ws = command(SERVERS_BY_NAME["daphne"], Path("/v"), Launch(8000, WS))
    assert daphne_ws[daphne_ws.index("--websocket-max-message-size") + 1] == str(16 << 20)
    assert "--websocket-max-message-size" not in command(
        SERVERS_BY_NAME["daphne"], Path("/v"), Launch(8000, "h1")
    )


def test_ws_masking_and_handshake():
    mask = b"\x01\x80\x00\xff"
    payload = bytes(range(256)) * 5 + b"\x00"  # leading and trailing zero bytes survive
    assert mask_payload(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert mask_payload(mask_payload(payload, mask), mask) == payload
    assert mask_payload(b"", mask) == b""
    frame = client_frame(b"x" * 70000, 0x2, mask)
    assert frame[:2] == b"\x82\xff" and int.from_bytes(frame[2:10], "big") == 70000
    request, accept = handshake_request(8000)
    assert request.startswith(b"GET /ws HTTP/1.1\r\n") and b"Sec-WebSocket-Version: 13" in request
    ok = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: " + accept
    assert handshake_problem(ok, accept) is None
    assert "wrong" in (handshake_problem(ok + b"x", accept) or "")
    assert "403" in (handshake_problem(b"HTTP/1.1 403 Forbidden", accept) or "")


class _Transport:
    """Records what the client writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        raise AssertionError("the client gave up on a valid stream")


def _server_frame(payload: bytes, opcode: int, final: bool = True) -> bytes:
    length = len(payload)
    first = (0x80 if final else 0) | opcode
    if length < 126:
        return bytes([first, length]) + payload
    if length < 1 << 16:
        return bytes([first, 126]) + length.to_bytes(2, "big") + payload
    return bytes([first, 127]) + length.to_bytes(8, "big") + payload


@pytest.mark.parametrize("chunk", [1, 3, 1000, 65536, 1 << 30])
def test_ws_client_counts_echoes_however_they_are_split(chunk):
    size = 70000  # a 64-bit length, as 1 MiB has
    stream_parts = [
        _server_frame(b"y" * size, 0x2),
        _server_frame(b"hi", 0x9),  # a ping between messages: answered with a pong
        _server_frame(b"y" * 300, 0x2, final=False),  # one message in three fragments
        _server_frame(b"y" * (size - 400), 0x0, final=False),
        _server_frame(b"y" * 100, 0x0),
        _server_frame(b"y" * (size - 1), 0x2),  # one byte short: an error
        _server_frame(b"y" * size, 0x2),
    ]

    async def feed() -> tuple[Stats, _Transport, EchoConnection]:
        stats = Stats()
        connection = EchoConnection(8000, size, 2, True, stats)
        transport = _Transport()
        connection.connection_made(cast(asyncio.Transport, transport))
        head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        head += b"Sec-WebSocket-Accept: " + connection.accept + b"\r\n\r\n"
        stream = head + b"".join(stream_parts)
        for start in range(0, len(stream), chunk):
            connection.data_received(stream[start : start + chunk])
        return stats, transport, connection

    stats, transport, connection = asyncio.run(feed())
    assert (stats.upgraded, stats.messages, stats.errors) == (1, 4, 1)
    assert connection.ready.done() and not connection.buffer and not connection.skip
    written = b"".join(transport.written[1:])  # after the handshake request
    pong = client_frame(b"hi", 0xA, connection.mask)
    assert written.count(pong) == 1
    # The window (2), then one more frame per echo: the client keeps the window full.
    assert written.replace(pong, b"") == connection.frame * (2 + 4)


def test_ratios_compare_multicorn_with_every_peer():
    summary = {
        "h1-get": {
            "multicorn-asyncio": {"requests_per_s": 2000.0, "rounds_ok": 1},
            "hypercorn-asyncio": {"requests_per_s": 1000.0, "rounds_ok": 1},
            "granian-asgi": {"requests_per_s": 4000.0, "rounds_ok": 1},
        }
    }
    ratios = report.ratios(summary, [SCENARIOS_BY_NAME["h1-get"]], SERVERS)
    assert ratios == {
        "h1-get": {"multicorn-asyncio": {"hypercorn-asyncio": 2.0, "granian-asgi": 0.5}}
    }
    runs = [
        {"scenario": "h1-get", "server": "daphne", "ok": True, "metrics": {"requests_per_s": v}}
        for v in (3.0, 1.0, 2.0)
    ]
    runs.append({"scenario": "h1-get", "server": "daphne", "ok": False, "metrics": {}})
    entry = report.summarize(runs)["h1-get"]["daphne"]
    assert (entry["requests_per_s"], entry["rounds_ok"], entry["rounds_failed"]) == (2.0, 3, 1)


def test_ws_tables_show_their_headline_and_ratios():
    scenario = SCENARIOS_BY_NAME["ws-echo-1m"]
    measured = {
        "multicorn-trio": {"mib_per_s": 300.0, "messages_per_s": 300.0, "rounds_ok": 1},
        "uvicorn-wsproto": {"mib_per_s": 600.0, "messages_per_s": 600.0, "rounds_ok": 1},
    }
    table = report.scenario_table(scenario, measured, 1)
    assert table[0].startswith("| server | MiB/s | messages/s |")
    assert table[2].startswith("| uvicorn-wsproto | 600.0 | 600 |")
    ratios = report.ratios({scenario.name: measured}, [scenario], SERVERS)
    assert ratios == {"ws-echo-1m": {"multicorn-trio": {"uvicorn-wsproto": 0.5}}}
    assert "Ratio of MiB/s" in report.ratio_table(scenario, ratios["ws-echo-1m"])[0]
    idle = SCENARIOS_BY_NAME["ws-idle-memory"]
    idle_table = report.scenario_table(
        idle, {"daphne": {"kib_per_connection": 20.25, "rounds_ok": 1}}, 1
    )
    assert idle_table[0].startswith("| server | KiB/connection |")
    assert idle_table[2].startswith("| daphne | 20.2 |")
    results = {
        "servers": {
            "multicorn-trio": {
                "available": True,
                "reason": "",
                "missing_features": {WS: "multicorn has no --ws-per-message-deflate option"},
            }
        },
        "skipped_scenarios": {},
        "runs": [],
    }
    assert any("`multicorn-trio`, ws:" in line for line in report.problems(results))


def test_quick_run_end_to_end(tmp_path):
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed: CI must install it (apt-get install wrk)")
        pytest.skip("wrk is not installed (apt-get install wrk); CI installs it")
    out = tmp_path / "results.json"
    argv = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--quick",
        "--no-setup",
        "--use-current-venv",
        "--servers",
        "multicorn-asyncio",
        "--scenarios",
        "h1-small",
        "--duration",
        "1",
        "--rounds",
        "1",
        "--json-out",
        str(out),
        "--plot",
        str(tmp_path / "plot.png"),
        "--markdown",
        str(tmp_path / "report.md"),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert [run["ok"] for run in results["runs"]] == [True], results["runs"]
    assert results["summary"]["h1-small"]["multicorn-asyncio"]["requests_per_s"] > 0
    assert results["servers"]["multicorn-asyncio"]["versions"]["multicorn"]
    assert "| multicorn-asyncio |" in done.stdout
    assert "## Results" in (tmp_path / "report.md").read_text()


def test_h3_run_end_to_end(tmp_path):
    if shutil.which("gtlsclient") is None:
        if os.environ.get("CI"):
            pytest.fail("gtlsclient is not installed: CI installs it (scripts/install-tools.sh)")
        pytest.skip("gtlsclient is not installed (apt-get install ngtcp2-client); CI installs it")
    out = tmp_path / "results.json"
    argv = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--no-setup",
        "--use-current-venv",
        "--servers",
        "multicorn-asyncio",
        "--scenarios",
        "h3-get",
        "--duration",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--json-out",
        str(out),
        "--no-plot",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert [run["ok"] for run in results["runs"]] == [True], results["runs"]
    metrics = results["runs"][0]["metrics"]
    assert metrics["requests"] > 0 and metrics["requests_per_s"] > 0
    assert metrics["client_processes"] == SCENARIOS_BY_NAME["h3-get"].connections
    assert metrics["client_cpu_percent"] >= 0
    assert "--quic-bind" in results["runs"][0]["server_command"]
    assert "| multicorn-asyncio |" in done.stdout
