"""The benchmark's own pure helpers (the benchmark itself runs with `make bench`, not here)."""

from __future__ import annotations

import pytest
from bench.wrk import parse_wrk_output

WRK_REPORT = """\
Running 10s test @ http://127.0.0.1:8000/orders/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    21.50ms    8.12ms 120.33ms   80.12%
    Req/Sec     1.50k   210.00     2.01k    70.00%
  Latency Distribution
     50%   19.87ms
     75%   24.01ms
     90%   30.55ms
     99%    1.02s
  29875 requests in 10.01s, 12.34MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   2984.52
Transfer/sec:      1.23MB
"""


def test_wrk_report_is_read_with_units_normalised_to_ms() -> None:
    result = parse_wrk_output(WRK_REPORT)

    assert result.requests_per_second == 2984.52
    assert result.requests == 29875
    assert result.p50_ms == pytest.approx(19.87)
    assert result.p99_ms == pytest.approx(1020.0)
    assert result.non_2xx == 7
    assert result.socket_errors == 5


def test_clean_report_has_no_errors_and_microsecond_latencies() -> None:
    clean = WRK_REPORT.replace("  Socket errors: connect 0, read 2, write 0, timeout 3\n", "")
    clean = clean.replace("  Non-2xx or 3xx responses: 7\n", "").replace("19.87ms", "870.00us")

    result = parse_wrk_output(clean)

    assert (result.non_2xx, result.socket_errors) == (0, 0)
    assert result.p50_ms == pytest.approx(0.87)


def test_output_without_latency_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="wrk --latency"):
        parse_wrk_output("Requests/sec: 10\n")
