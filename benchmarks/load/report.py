"""The results of one benchmark run: their JSON shape and the readable tables printed at the end."""

import msgspec

from benchmarks.load.dataset import ImportReport
from benchmarks.load.freshness import (
    EVENT,
    STOCK,
    TARGET_SECONDS,
    WRITE,
    Freshness,
    KindSummary,
)
from benchmarks.load.knn import KnnCeiling
from benchmarks.load.metrics import RedisWork, RouteLatency
from benchmarks.load.servers import CpuSplit
from benchmarks.load.workload import READS, ROUTES, LoadResult

TARGET_P99_MS = 50.0
OTHER_BUSY = 15.0  # % of one core used by other processes that flags a figure
# The phase that runs /health/live at the fixed rate just before each fixed-rate run.
STACK_AT_RATE = "stack at rate"


class Run(msgspec.Struct, kw_only=True):
    """wrk processes started together against one server, and the CPU used meanwhile."""

    server: str
    phase: str  # "http ceiling" | "alone" | "mix" | STACK_AT_RATE | "fixed rate"
    results: list[LoadResult]
    cpu: CpuSplit
    # Per load result, its requests/s over the server's HTTP ceiling and over the KNN ceiling.
    vs_http_ceiling: list[float | None]
    vs_knn_ceiling: list[float | None]
    redis: RedisWork | None = None  # Redis commands per request answered
    routes: list[RouteLatency] = []  # server-side, from /metrics (single-process servers)
    backlog: int = 0  # stream entries the consumers had still to process when the run ended
    drain_seconds: float = 0.0  # how long they then took (the next run waited for it)
    freshness: Freshness | None = None  # what the freshness probe saw during the run
    for_you_lists: dict[str, int] = {}  # "for you" lists answered in the run, by source
    content_blends: dict[str, int] = {}  # their content side, by what ranked it (copy, index)
    redis_children: int = 0  # AOF rewrites or snapshots Redis ran in a child during the run


class ServerInfo(msgspec.Struct, kw_only=True):
    name: str
    description: str
    python: str
    skipped: str | None = None  # why it did not run
    # Warnings and errors the service logged during the run (import included for serve).
    log_problems: dict[str, int] = {}


class Report(msgspec.Struct, kw_only=True):
    command: str
    started_at: str
    seconds: float
    cpus: int
    machine_busy_before: float  # % of one core used by other processes just before the run
    wrk: str
    options: dict[str, object]
    dataset: dict[str, int]
    imported: ImportReport | None  # None when an earlier import was reused
    knn: list[KnnCeiling]  # the first is the ceiling the ratios use
    servers: list[ServerInfo]
    runs: list[Run]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  " + "  ".join([first, *rest])

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _load_row(result: LoadResult, http: float | None, knn: float | None) -> list[str]:
    return [
        result.target,
        f"{result.rps:,.0f}",
        f"{result.p50_ms:.1f}",
        f"{result.p95_ms:.1f}",
        f"{result.p99_ms:.1f}",
        f"{result.non_2xx:,}",
        f"{result.errors:,}",
        f"{result.timeouts:,}",
        _ratio(http),
        _ratio(knn),
    ]


LOAD_HEADERS = [
    "target",
    "req/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "non-2xx",
    "errors",
    "timeouts",
    "/HTTP",
    "/KNN",
]


def _other(cpu: CpuSplit) -> float:
    """CPU of processes outside the measurement (another benchmark skews every figure)."""
    return cpu.machine - cpu.service - cpu.redis - cpu.load_generator


def _cpu(run: Run) -> str:
    other = _other(run.cpu)
    warning = "  <- other processes busy: figures understated" if other > OTHER_BUSY else ""
    return f"  CPU, % of one core: {run.cpu.text()}  (other {other:.0f}%){warning}"


def _cpu_cell(cpu: CpuSplit) -> str:
    other = _other(cpu)
    flag = " !" if other > OTHER_BUSY else ""
    return f"{cpu.service:.0f}/{cpu.redis:.0f}/{cpu.load_generator:.0f}/{other:.0f}{flag}"


def _redis_cell(run: Run) -> str:
    return (
        "-"
        if run.redis is None
        else (f"{run.redis.commands_per_request:.0f}/{run.redis.usec_per_request:.0f}")
    )


def _backlog_cell(run: Run) -> str:
    return f"{run.backlog:,}/{run.drain_seconds:.1f}" if run.backlog else "0"


def _ms_per_request(run: Run | None) -> tuple[float, float] | None:
    """CPU milliseconds per answered request, service and Redis: unlike requests/s, these
    barely move when other processes take cores away (1000 / the first = requests/s per core).
    None without a run or an answer."""
    answered = sum(result.requests for result in run.results) if run else 0
    if run is None or not answered:
        return None
    per = 1000.0 * run.cpu.seconds / 100.0 / answered
    return run.cpu.service * per, run.cpu.redis * per


def _cpu_per_request(run: Run) -> str:
    """`_ms_per_request`, service/Redis."""
    ms = _ms_per_request(run)
    return "-" if ms is None else f"{ms[0]:.2f}/{ms[1]:.2f}"


def _service_ms(run: Run | None) -> str:
    """`_ms_per_request`, the service's alone, to three places (the empty route's is ~0.1)."""
    ms = _ms_per_request(run)
    return "-" if ms is None else f"{ms[0]:.3f}"


def _stack_line(stack: Run | None, saturated: Run | None) -> list[str]:
    if stack is None:
        return []
    return [
        f"  the service's stack alone just before, at the same rate (/health/live, "
        f"{stack.results[0].seconds:.0f} s): {_service_ms(stack)} ms service CPU per request, "
        f"against {_service_ms(saturated)} at saturation: what the machine charges for "
        "requests that come one at a time"
    ]


def _section(title: str, runs: list[Run]) -> list[str]:
    if not runs:
        return []
    rows = [
        [
            *_load_row(result, http, knn),
            _cpu_per_request(run),
            _redis_cell(run),
            _backlog_cell(run),
            _cpu_cell(run.cpu),
        ]
        for run in runs
        for result, http, knn in zip(
            run.results, run.vs_http_ceiling, run.vs_knn_ceiling, strict=True
        )
    ]
    headers = [
        *LOAD_HEADERS,
        "CPU ms/req svc/redis",
        "Redis cmds/us per req",
        "backlog/drain s",
        "CPU % svc/redis/wrk/other",
    ]
    lines = ["", title, _table(headers, rows)]
    for run in runs:
        if run.redis is not None and run.redis.top:
            top = ", ".join(f"{name} {calls:g}" for name, calls in run.redis.top.items())
            lines.append(f"    {run.results[0].target}: Redis calls per request: {top}")
        lines += [f"    {run.results[0].target}: {line}" for line in _redis_children(run)]
    return lines


def _redis_children(run: Run) -> list[str]:
    """A Redis child (an AOF rewrite) takes most of a core for a second or more: a p99 that
    jumps with one in the run may owe the jump to it."""
    if not run.redis_children:
        return []
    return [
        f"Redis forked {run.redis_children} background child(ren) in this run (AOF rewrite or "
        "snapshot; its CPU is in 'other')"
    ]


def _for_you_lists(run: Run) -> list[str]:
    """How the run's "for you" lists were answered: a computed one costs far more."""
    kept, computed = run.for_you_lists.get("kept", 0), run.for_you_lists.get("computed", 0)
    if not kept + computed:
        return []
    share = computed / (kept + computed)
    by = ", ".join(f"{ranked_by} {count:,}" for ranked_by, count in run.content_blends.items())
    ranked = f"; content side ranked by {by}" if by else ""
    return [
        f'  "for you" lists: {kept:,} kept, {computed:,} computed ({share:.0%} computed){ranked}'
    ]


def _mix_details(run: Run) -> list[str]:
    result = run.results[0]
    total = sum(result.sent.values()) or 1
    shares = ", ".join(f"{name} {count / total:.1%}" for name, count in result.sent.items())
    lines = [f"  sent: {shares}", *_for_you_lists(run)]
    if run.routes:
        lines.append(
            "  server-side latency per route in this mix (/metrics histogram, "
            "interpolated in buckets):"
        )
        rows = [
            [r.route, f"{r.requests:,}", f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}", f"{r.p99_ms:.1f}"]
            for r in run.routes
        ]
        lines.append(_table(["route", "requests", "p50 ms", "p95 ms", "p99 ms"], rows))
    return lines


def _verdict(result: LoadResult) -> str:
    """Whether a read endpoint met the issue's target at this offered rate."""
    if result.target not in READS:
        return "-"
    if not result.requests:
        return "NO: no answer"
    held = result.rps >= 0.95 * (result.offered_rate or 0.0)
    clean = not (result.errors or result.timeouts or result.non_2xx or result.late)
    return "yes" if held and clean and result.p99_ms < TARGET_P99_MS else "NO"


def _fixed_rate(run: Run, stack: Run | None = None, saturated: Run | None = None) -> list[str]:
    rows = []
    for result in run.results:
        rows.append(
            [
                result.target,
                f"{result.offered_rate or 0:,.0f}",
                f"{result.connections:,}",
                f"{result.rps:,.0f}",
                f"{result.p50_ms:.1f}",
                f"{result.p95_ms:.1f}",
                f"{result.p99_ms:.1f}",
                f"{result.non_2xx:,}",
                f"{result.errors:,}",
                f"{result.timeouts:,}",
                f"{result.late:,}",
                _verdict(result),
            ]
        )
    headers = [
        "target",
        "offered/s",
        "conns",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "non-2xx",
        "errors",
        "timeouts",
        "late",
        f"p99<{TARGET_P99_MS:g}ms, clean, rate held",
    ]
    lines = [_table(headers, rows), _cpu(run)]
    lines.append(f"  CPU ms per request answered, service/Redis: {_cpu_per_request(run)}")
    lines += _stack_line(stack, saturated)
    lines += _for_you_lists(run)
    lines += [f"  {line}" for line in _redis_children(run)]
    if run.redis is not None:
        lines.append(
            f"  Redis per request: {_redis_cell(run)} commands/us; stream backlog at the end: "
            f"{run.backlog:,} entries, cleared {run.drain_seconds:.1f} s later"
        )
        top = ", ".join(f"{name} {calls:g}" for name, calls in run.redis.top.items())
        lines.append(f"  Redis calls per request: {top}")
    return lines


def _fixed_rate_runs(runs: list[tuple[Run, Run | None]]) -> list[str]:
    """The fixed-rate runs side by side, each with the service's stack alone at the rate just
    before it (or None): each read's p99, whether every read met the target, the CPU per
    request, the stack's CPU per request and the CPU the hypervisor took (a slow spell of the
    machine shows in them), Redis's forks, and the share of "for you" lists computed (a run
    finds those the run before it dropped)."""
    reads = [result.target for result in runs[0][0].results if result.target in READS]
    rows, met_in = [], 0
    for number, (run, stack) in enumerate(runs, 1):
        p99 = {result.target: result.p99_ms for result in run.results}
        met = all(_verdict(result) == "yes" for result in run.results if result.target in READS)
        met_in += met
        lists = sum(run.for_you_lists.values())
        computed = f"{run.for_you_lists.get('computed', 0) / lists:.0%}" if lists else "-"
        rows.append([
            str(number), *(f"{p99[target]:.1f}" for target in reads), "yes" if met else "NO",
            _cpu_per_request(run), _service_ms(stack), f"{run.cpu.steal:.1f}",
            str(run.redis_children), computed,
        ])  # fmt: skip
    headers = ["run", *(f"{target} p99 ms" for target in reads), "all met",
               "CPU ms/req svc/redis", "stack alone ms/req", "stolen %", "Redis forks",
               "for you computed"]  # fmt: skip
    return [
        "",
        f"the fixed-rate runs, back to back: every read met the target in {met_in} of {len(runs)}",
        _table(headers, rows),
    ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _freshness_verdict(kind: KindSummary) -> str:
    if not kind.trials:
        return "-: no trial"
    if kind.p99_s is None:
        return "NO: never seen"
    return "yes" if kind.p99_s < TARGET_SECONDS and not kind.missed else "NO"


def freshness_lines(seen: Freshness, offered_rate: float) -> list[str]:
    """The probe's figures per kind, what it cost the run, and what it left out."""
    share = seen.rps / offered_rate if offered_rate else 0.0
    writes_rate = seen.product_writes / max(seen.seconds, 1e-9)
    lines = [
        "",
        f"freshness during this run: one trial at a time, one every {seen.period_s:g} s at most, "
        f"from one Python client, {seen.requests:,} requests in {seen.seconds:.1f} s = "
        f"{seen.rps:.1f}/s ({share:.1%} of the offered rate), its CPU "
        f"{seen.cpu_percent:.0f}% of a core (within 'other' above)",
        f"  its {seen.product_writes:,} product writes ({writes_rate:.1f}/s) are embedded, "
        "indexed and patched into the cached neighbour lists their vectors enter, work the mix "
        "alone would not do: compare a run with --freshness-trials 0",
    ]
    rows = [
        [
            kind.kind,
            f"{kind.trials:,}",
            f"{kind.missed:,}",
            _seconds(kind.p50_s),
            _seconds(kind.p95_s),
            _seconds(kind.p99_s),
            _seconds(kind.max_s),
            "-" if kind.round_trip_ms is None else f"{kind.round_trip_ms:.1f}",
            f"{kind.first_get:,}",
            _freshness_verdict(kind),
        ]
        for kind in seen.kinds
    ]
    headers = [
        "kind",
        "trials",
        f"missed (>{seen.deadline_s:g} s)",
        "p50 s",
        "p95 s",
        "p99 s",
        "max s",
        "GET round trip ms",
        "seen at 1st GET",
        f"p99<{TARGET_SECONDS:g}s, none missed",
    ]
    lines.append(_table(headers, rows))
    lines += [
        f"  {WRITE}: from the response to POST /api/v1/products of a copy of a product's text "
        "(new id) to the first GET /api/v1/products/{original}/similar?k=10&min_score=0 "
        "listing the copy",
        f"  {STOCK}: from the response to PATCH in_stock=false on that copy to the first such "
        "GET without it",
        f"  {EVENT}: from the response to POST /api/v1/events (one view, a new session) to the "
        "first GET /api/v1/sessions/{id}/recommendations that differs from the one before",
        "  GETs polled every 10 ms: each time overstates the delay by up to one GET round trip "
        "(the median shown) and 10 ms, the resolution; a trial seen at the first GET had its "
        "effect before that GET, so its time is that GET's round trip",
    ]
    for kind in seen.kinds:
        changed = kind.trials - kind.missed
        if kind.attributed is not None and changed:
            lines.append(
                f"  {kind.kind}: {kind.attributed} of {changed} changed lists name the viewed "
                "product as an anchor (the others changed, e.g. with popularity, before the view "
                "showed)"
            )
    notes = []
    if seen.cut_short:
        notes.append(
            f"fewer trials than the {seen.trials_asked} asked: the run ended first (they need "
            f"--rate-duration {seen.seconds_needed:g} or more, longer if the service is slow)"
        )
    if seen.open_at_end:
        notes.append(f"{seen.open_at_end} trial(s) left out: still open when the run ended")
    if seen.failed:
        notes.append(f"{seen.failed} trial(s) left out: their write or first GET failed")
    if seen.errors:
        notes.append("failed requests: " + ", ".join(f"{k} x {v}" for k, v in seen.errors.items()))
    if seen.refit_during:
        notes.append("WARNING: the live model changed (a refit) while the probe ran")
    notes.append(seen.cleanup_text())
    lines += [f"  {note}" for note in notes]
    return lines


def render(report: Report) -> str:
    opts = report.options
    data = report.dataset
    lines = [
        "=" * 100,
        f"Load benchmark: {report.command}",
        f"{report.started_at}, {report.seconds:.0f} s; {report.cpus} cores; {report.wrk}; "
        f"other processes used {report.machine_busy_before:.0f}% of a core just before",
        f"Online Retail: {data['products']:,} products, {data['events']:,} events, "
        f"{data['users']:,} users",
    ]
    if report.imported is not None:
        i = report.imported
        lines.append(
            f"import through the API: products {i.products_seconds:.1f} s "
            f"({i.products / max(i.products_seconds, 1e-9):,.0f}/s), indexed and refitted "
            f"{i.indexed_seconds:.1f} s later; events {i.events_seconds:.1f} s "
            f"({i.events / max(i.events_seconds, 1e-9):,.0f}/s); refit {i.refit_seconds:.1f} s; "
            f"consumers caught up {i.caught_up_seconds:.1f} s after it "
            f"(rejected: {i.products_rejected} products, {i.events_rejected} events; the lag "
            f"gauges read 0 while up to {i.gauge_missed_entries:,} entries were unprocessed)"
        )
    lines += ["", "Store ceiling: raw KNN through redis-py (service idle, no pipelining):"]
    for knn in report.knn:
        lines.append(
            f"  {knn.query}: KNN on {knn.index} at EF_RUNTIME {knn.ef_runtime}, {knn.tasks} "
            f"tasks: {knn.qps:,.0f} queries/s, p50 {knn.p50_ms:.2f} ms, p99 {knn.p99_ms:.2f} ms; "
            f"Redis CPU {knn.redis_cpu_us_per_query:.0f} us/query (= {knn.redis_bound_qps:,.0f}/s "
            f"on one Redis core); the client used {knn.client_cpu_percent:.0f}% of a core"
        )
    lines += [
        f"Targets: {', '.join(f'{k} = {v}' for k, v in ROUTES.items())}",
        "/HTTP, /KNN: requests/s over the same server's HTTP ceiling (constant JSON) and over "
        "the store ceiling's first line.",
        "CPU ms/req svc/redis: CPU time of the server's processes and of Redis per request "
        "answered; it barely moves when other processes take cores away (1000 / it = req/s "
        "per core).",
        "Redis cmds/us per req: commands Redis executed and microseconds it spent executing them, "
        "per request answered (stream consumers included).",
        "backlog/drain s: stream entries left unprocessed at the end of the run, and the seconds "
        "the consumers then took (the next run waits for them).",
        "CPU % svc/redis/wrk/other: % of one core used by the server's processes, Redis, wrk and "
        f"everything else on the machine ('!': other > {OTHER_BUSY:g}%, the figures understated).",
    ]
    for server in report.servers:
        lines += ["", "-" * 100, f"{server.name}: {server.description} ({server.python})"]
        if server.skipped:
            lines.append(f"  skipped: {server.skipped}")
            continue
        for problem, count in list(server.log_problems.items())[:6]:
            lines.append(f"  logged {count:,} x {problem}")
        runs = [run for run in report.runs if run.server == server.name]
        by_phase = {
            phase: [r for r in runs if r.phase == phase]
            for phase in ("http ceiling", "alone", "mix", STACK_AT_RATE, "fixed rate")
        }
        saturated = next(
            (run for run in by_phase["alone"] if run.results[0].target == "live"), None
        )
        lines += _section(
            f"HTTP ceiling, {opts['connections']} connections, {opts['duration']} s, closed loop",
            by_phase["http ceiling"],
        )
        lines += _section(
            f"each target alone, {opts['connections']} connections, "
            f"{opts['duration']} s, closed loop",
            by_phase["alone"],
        )
        for run in by_phase["mix"]:
            lines += _section(
                f"the mix at saturation, {opts['connections']} connections, {opts['duration']} s",
                [run],
            )
            lines += _mix_details(run)
        # Each fixed-rate run with the stack run just before it, if any (serve's suite only).
        rate_runs = by_phase["fixed rate"]
        stacks: list[Run | None] = [*by_phase[STACK_AT_RATE], *[None] * len(rate_runs)]
        fixed_runs = list(zip(rate_runs, stacks, strict=False))
        for number, (run, stack) in enumerate(fixed_runs, 1):
            of = f" (run {number} of {len(fixed_runs)})" if len(fixed_runs) > 1 else ""
            lines += [
                "",
                f"the mix at a fixed rate{of}: {opts['rate']:,} requests/s offered over "
                f"{opts['rate_connections']:,} connections for {opts['rate_duration']} s, "
                "one wrk per target",
            ]
            lines += _fixed_rate(run, stack, saturated)
            if run.freshness is not None:
                lines += freshness_lines(run.freshness, float(str(opts["rate"])))
        if len(fixed_runs) > 1:
            lines += _fixed_rate_runs(fixed_runs)
    lines += ["", "-" * 100, "Servers compared (same data, same wrk settings)"]
    rows = []
    for server in report.servers:
        if server.skipped:
            continue
        phases = {r.phase: r for r in report.runs if r.server == server.name}
        ceiling = phases.get("http ceiling")
        mix, fixed = phases.get("mix"), phases.get("fixed rate")
        fixed_results = [result for run in report.runs if run.server == server.name
                         and run.phase == "fixed rate" for result in run.results]  # fmt: skip
        worst = max((r.p99_ms for r in fixed_results if r.target in READS), default=0.0)
        bad = sum(r.non_2xx + r.errors + r.timeouts for r in fixed_results)
        rows.append(
            [
                server.name,
                f"{ceiling.results[0].rps:,.0f}" if ceiling else "-",
                f"{mix.results[0].rps:,.0f}" if mix else "-",
                f"{mix.results[0].p99_ms:.1f}" if mix else "-",
                f"{mix.cpu.service:.0f}/{mix.cpu.redis:.0f}" if mix else "-",
                f"{worst:.1f}" if fixed else "-",
                f"{bad:,}" if fixed else "-",
            ]
        )
    lines.append(
        _table(
            [
                "server",
                "HTTP ceiling req/s",
                "mix req/s",
                "mix p99 ms",
                "mix CPU service/redis %",
                "fixed rate: worst read p99 ms (of all runs)",
                "fixed rate: failed",
            ],
            rows,
        )
    )
    return "\n".join(lines)
