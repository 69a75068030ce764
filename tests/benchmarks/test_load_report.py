"""The load benchmark's summary of its fixed-rate runs (pure formatting of given results)."""

from benchmarks.load.report import STACK_AT_RATE, Run, _fixed_rate, _fixed_rate_runs
from benchmarks.load.servers import CpuSplit
from benchmarks.load.workload import LoadResult


def result(target: str, p99_ms: float, rate: float = 100.0) -> LoadResult:
    return LoadResult(
        target=target, connections=100, offered_rate=rate, seconds=10.0,
        requests=int(rate * 10), rps=rate, p50_ms=1.0, p95_ms=p99_ms / 2, p99_ms=p99_ms,
        max_ms=p99_ms, non_2xx=0, errors=0, timeouts=0, late=0, sent={},
    )  # fmt: skip


def cpu(service: float, steal: float = 0.0) -> CpuSplit:
    return CpuSplit(
        seconds=10.0, service=service, redis=20.0, load_generator=10.0, machine=130.0, steal=steal
    )


def fixed_run(similar_p99: float, service_cpu: float, forks: int = 0, steal: float = 0.0) -> Run:
    return Run(
        for_you_lists={"kept": 3, "computed": 1},
        server="serve",
        phase="fixed rate",
        results=[result("similar", similar_p99), result("events", 90.0)],
        cpu=cpu(service_cpu, steal),
        vs_http_ceiling=[None, None],
        vs_knn_ceiling=[None, None],
        redis_children=forks,
    )


def live_run(service_cpu: float, rate: float, phase: str = STACK_AT_RATE) -> Run:
    return Run(
        server="serve",
        phase=phase,
        results=[result("live", 1.0, rate)],
        cpu=cpu(service_cpu),
        vs_http_ceiling=[None],
        vs_knn_ceiling=[None],
    )


def test_the_fixed_rate_runs_are_summed_up_read_by_read() -> None:
    lines = _fixed_rate_runs(
        [(fixed_run(12.5, 90.0), None), (fixed_run(61.0, 110.0, forks=1, steal=7.5), None)]
    )
    assert lines[1] == "the fixed-rate runs, back to back: every read met the target in 1 of 2"
    table = lines[2].splitlines()
    assert "similar p99 ms" in table[0]
    assert "events" not in table[0]  # a write: no latency target
    first, second = (row.split() for row in table[1:])
    # 2,000 requests in 10 s: 90% of a core is 4.5 ms per request, Redis's 20% 1 ms.
    assert first == ["1", "12.5", "yes", "4.50/1.00", "-", "0.0", "0", "25%"]
    assert second == ["2", "61.0", "NO", "5.50/1.00", "-", "7.5", "1", "25%"]


def test_each_fixed_rate_run_is_shown_beside_the_stack_alone_at_that_rate() -> None:
    runs = [fixed_run(12.5, 90.0), fixed_run(61.0, 110.0)]
    # 40% of a core for 10 s over 10,000 requests: 0.4 ms each; then 60%: 0.6 ms.
    stacks = [live_run(40.0, 1000.0), live_run(60.0, 1000.0)]
    table = _fixed_rate_runs(list(zip(runs, stacks, strict=True)))[2].splitlines()
    assert "stack alone ms/req" in table[0]
    assert [row.split()[4] for row in table[1:]] == ["0.400", "0.600"]

    # At saturation the same route took 180% of a core for 150,000 requests: 0.12 ms each.
    lines = _fixed_rate(runs[0], stacks[0], live_run(180.0, 15000.0, phase="alone"))
    assert any("0.400 ms service CPU per request, against 0.120 at saturation" in line
               for line in lines)  # fmt: skip
    assert not any("stack alone" in line for line in _fixed_rate(runs[0]))
