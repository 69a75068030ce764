"""Serving throughput and latency under a shopper workload: `python -m benchmarks.load`.

How, in one run (the defaults took 7-9 minutes on the 2-core machine, about a third of it the
import; `--data-dir` keeps an import, and every later run starts from the state it left, as the
compare phase does within a run):
1. Convert the Online Retail data and start the service as production runs it,
   `python -m recommender serve --port P --data-dir D` (RECOMMENDER_LOGGING__ACCESS_LOG=false),
   on its embedded Redis; import the catalog and the history through the API and wait until
   the consumers have caught up (`benchmarks.load.dataset`).
2. The store's ceiling: raw KNN queries through redis-py at the configured EF_RUNTIME, with the
   service idle (`benchmarks.load.knn`).
3. For `serve`: the HTTP ceiling (`benchmarks.load.ceiling_app` under the same server and
   flags); a warm-up (ten rounds of one request per endpoint, each on a new connection; the
   mix for 3 s; three sweeps of every product's similar and bought-together and every
   shopper's "for you", so the caches are as warm as after a while in production; not
   reported); then with wrk (`benchmarks.load.workload`) `/health/live` and each endpoint alone at
   saturation, one more sweep (the events run drops many shoppers' lists), the mix at
   saturation, and the mix at a fixed rate over many connections, one wrk per endpoint so
   that each gets its own latency figures. Just before it, `/health/live` alone at the same
   rate and over as many connections (`--duration`): the service's CPU per request there,
   against the same route's at saturation, is what the machine charges in that spell for
   requests that come one at a time (a wake-up each), whatever they do.
   During that fixed-rate run, the freshness probe (`benchmarks.load.freshness`): one trial at
   a time from one Python client, alternating a product write (until GET similar of the
   product it copies lists it, then out of stock until it no longer does) and a view event of
   a new session (until its "for you" list changes), each timed from the write's or the
   event's response; one trial every `--freshness-period` (0.2 s: a few tens of requests/s),
   until `--freshness-trials` of each or the run's end (100 of each need `--rate-duration 41`;
   the default 15 s leaves room for about 35). Its product writes are embedded, indexed and
   patched into the cached neighbour lists they enter (of the copied product and its
   neighbours): `--freshness-trials 0` gives the fixed-rate figures without them. Then it
   deletes the copies it wrote. With `--rate-runs N`, N-1 more fixed-rate runs follow, each
   after its own `/health/live` run and without the probe, and a table sums them up: the
   machine's speed varies from minute to minute.
4. For each other server in `--compare` (uvicorn with 1 worker, granian with 2), on the
   same data and an embedded Redis the benchmark starts: the HTTP ceiling, the mix at
   saturation and the mix at a fixed rate.
For every wrk run: the CPU used by the service, Redis and wrk (`benchmarks.load.servers`), and
the Redis commands executed per request (`benchmarks.load.metrics`); for runs that ask for
"for you", how many lists were kept and how many computed (`serve`'s /metrics); and whether
Redis forked a child (an AOF rewrite) meanwhile. Everything is printed as tables at the end
and written as JSON (`--json`). Only 127.0.0.1 is ever contacted; every run is bounded in time
(wrk's -d) and every wait has a deadline.
"""

import argparse
import asyncio
import contextlib
import datetime
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import redis

from benchmarks.load import dataset, freshness, knn, metrics, servers, workload
from benchmarks.load.report import STACK_AT_RATE, Report, Run, ServerInfo, render
from benchmarks.load.servers import CpuMeter, Server, ServerKind
from benchmarks.support import quiet_logs
from recommender.config import EmbeddedRedisSettings, Settings, load_settings
from recommender.platform.embedded import EmbeddedRedis

WRK_MISSING = """wrk (the HTTP load generator) is not on PATH.
On Debian or Ubuntu: apt-get install wrk   (elsewhere: https://github.com/wg/wrk, make)"""
IMPORT_MARKER = "import.json"
WARM_UP_SECONDS = 3.0
# Warm-up rounds, each request on a new connection: with 2 workers, the odds that one of them
# gets none of the 10 searches are 2 x 0.5^10 (0.2%).
WARM_UP_ROUNDS = 10
# Then every product's similar and bought-together lists and every shopper's "for you", this
# many times, on new connections each time (each worker keeps its own neighbour cache).
SWEEPS = 3
PATIENCE = 900.0  # seconds any single wait (readiness, consumers, index) may take


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="Serving load benchmark (issue 5): wrk against the real service on the "
        "Online Retail data, beside an HTTP and a RediSearch ceiling.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    option = parser.add_argument
    option("--duration", type=float, default=10.0, help="seconds of each saturation run")
    option("--connections", type=int, default=64, help="connections of each saturation run")
    option("--rate", type=int, default=1000, help="requests/s offered in the fixed-rate run")
    option("--rate-connections", type=int, default=1000, help="connections of that run")
    option("--rate-duration", type=float, default=15.0, help="seconds of that run")
    option(
        "--rate-runs",
        type=int,
        default=1,
        help="fixed-rate runs under serve, back to back (the first with the freshness probe): "
        "how often the target holds, when the machine's speed varies from minute to minute",
    )
    option("--timeout", type=float, default=5.0, help="wrk's request timeout, seconds")
    option(
        "--freshness-trials",
        type=int,
        default=100,
        help="trials of each kind (write, event) the freshness probe runs during serve's "
        "fixed-rate run, at most: one every --freshness-period until the run ends (100 of each "
        "need --rate-duration 41 at 0.2 s); 0: no probe (and no product writes in that run)",
    )
    option(
        "--freshness-period",
        type=float,
        default=freshness.PERIOD,
        help="seconds from one freshness trial's start to the next (write and event "
        "alternating); longer: fewer trials, fewer product writes during the run",
    )
    option(
        "--freshness-deadline",
        type=float,
        default=5.0,
        help="seconds a freshness trial waits for its effect before it counts as missed",
    )
    option("--knn-tasks", type=int, default=4, help="concurrent redis-py tasks, KNN ceiling")
    option(
        "--compare",
        default="uvicorn-w1,granian-w2",
        help="other servers to run the mix under, comma-separated, from "
        f"{', '.join(k for k in servers.KINDS if k != 'serve')}; '' for none; one whose "
        "module --python cannot import is skipped",
    )
    option("--python", default=sys.executable, help="interpreter that runs the servers")
    option(
        "--data-dir",
        type=Path,
        help="keep the imported data here and start every later run from the state the import "
        "left (valid only with the same code and data); default: a temporary directory, "
        "imported afresh",
    )
    option(
        "--json",
        type=Path,
        default=Path(tempfile.gettempdir()) / "recommender-load.json",
        help="where to write the results as JSON",
    )
    option("--seed", type=int, default=1, help="random seed of the workload")
    return parser


@dataclass(frozen=True, slots=True)
class Under:
    """The server being measured: where it answers, its processes, its HTTP ceiling."""

    server: str
    url: str
    service_pid: int
    redis_url: str | None = None
    redis_pid: int | None = None
    http_ceiling: float | None = None
    pooled_metrics: bool = False  # its /metrics covers every request (serve's workers pool)


class Bench:
    """One benchmark run: its options, work directory, wrk and the runs measured so far."""

    def __init__(
        self, args: argparse.Namespace, work: Path, data: dataset.Dataset, namespace: str
    ) -> None:
        self.args = args
        self.streams = [namespace + dataset.CATALOG_STREAM, namespace + dataset.BEHAVIOUR_STREAM]
        self.work = work
        self.data = data
        script = work / "workload.lua"
        workload.write_script(script, data, args.seed)
        self.wrk = workload.Wrk(script, args.timeout, args.seed)
        self.runs: list[Run] = []
        self.knn_qps = 0.0
        self.log_problems: dict[str, dict[str, int]] = {}  # server name -> its log's problems

    def measure(
        self,
        under: Under,
        phase: str,
        jobs: list[workload.WrkJob],
        probe: freshness.Probe | None = None,
    ) -> Run:
        """Run the wrk jobs together (and `probe` beside them) and record the figures."""
        client = redis.Redis.from_url(under.redis_url) if under.redis_url else None
        try:
            # One scrape on each side gives the mix's route latencies and the "for you" counts.
            asks_for_you = any(job.target in {"mix", "for_you"} for job in jobs)
            scraped = _metrics_text(under.url) if under.pooled_metrics and asks_for_you else None
            commands_before = metrics.redis_commands(client) if client else None
            forks_before = metrics.redis_forks(client) if client else None
            meter = CpuMeter(under.service_pid, under.redis_pid)
            if probe is not None:
                probe.start(max(job.seconds for job in jobs))
            try:
                results, wrk_seconds = self.wrk.run(under.url, jobs)
            finally:
                if probe is not None:
                    probe.halt()
            cpu = meter.split(wrk_seconds)
            answered = sum(result.requests for result in results)
            work = None
            if client is not None and commands_before is not None:
                after = metrics.redis_commands(client)
                work = metrics.redis_work(commands_before, after, answered)
            children = 0
            if client is not None and forks_before is not None:
                forked, running = forks_before
                children = metrics.redis_forks(client)[0] - forked + running
            routes: list[metrics.RouteLatency] = []
            lists: dict[str, int] = {}
            blends: dict[str, int] = {}
            if scraped is not None:
                now = _metrics_text(under.url)
                if phase == "mix":
                    routes = metrics.route_latencies(
                        metrics.route_histograms(scraped), metrics.route_histograms(now)
                    )
                lists = metrics.for_you_lists(scraped, now)
                blends = metrics.content_blends(scraped, now)
        finally:
            if client is not None:
                client.close()
        backlog, drain_seconds = self._drain(under.redis_url)
        run = Run(
            server=under.server,
            phase=phase,
            results=results,
            cpu=cpu,
            vs_http_ceiling=[_ratio(r.rps, under.http_ceiling) for r in results],
            vs_knn_ceiling=[_ratio(r.rps, self.knn_qps) for r in results],
            redis=work,
            routes=routes,
            backlog=backlog,
            drain_seconds=drain_seconds,
            freshness=probe.result() if probe is not None else None,
            for_you_lists=lists,
            content_blends=blends,
            redis_children=children,
        )
        self.runs.append(run)
        summary = ", ".join(f"{r.target} {r.rps:,.0f}/s p99 {r.p99_ms:.1f} ms" for r in results)
        _progress(f"{under.server} {phase}: {summary}")
        if run.freshness is not None:
            kinds = ", ".join(
                f"{k.kind} {k.trials} trials p99 {k.p99_s} s, {k.missed} missed"
                for k in run.freshness.kinds
            )
            _progress(f"{under.server} {phase}, freshness: {kinds}")
        return run

    def _drain(self, redis_url: str | None) -> tuple[int, float]:
        """The stream backlog a run left, and the seconds the consumers took to clear it
        (waited for, so that the next run does not pay for this one's events)."""
        if redis_url is None:
            return 0, 0.0
        started = time.monotonic()
        client = redis.Redis.from_url(redis_url)
        try:
            backlog = remaining = metrics.stream_backlog(client, self.streams)
            while remaining:
                if time.monotonic() - started > PATIENCE:
                    raise TimeoutError(f"{remaining} stream entries still unprocessed")
                time.sleep(0.1)
                remaining = metrics.stream_backlog(client, self.streams)
        finally:
            client.close()
        return backlog, round(time.monotonic() - started, 1)

    def http_ceiling(self, kind: ServerKind) -> float:
        """The ceiling app under `kind`'s server, at saturation; its requests/s."""
        port = servers.free_port()
        url = f"http://{servers.HOST}:{port}"
        log = self.work / f"ceiling-{kind.name}.log"
        app = Server(kind.ceiling(self.args.python, port), log, {})
        try:
            app.wait_answering(url, "/", PATIENCE)
            job = workload.WrkJob("ceiling", self.args.connections, self.args.duration)
            run = self.measure(Under(kind.name, url, app.pid), "http ceiling", [job])
        finally:
            app.stop()
        return run.results[0].rps

    def warm_up(self, url: str, redis_url: str | None) -> None:
        """Requests to every endpoint one after the other, each on a new connection so that
        every worker process gets some (and loads the embedding model before the clock runs,
        once), then the mix for a few seconds; none of it is reported."""
        product, user = self.data.products[0]["id"], self.data.users[0]
        paths = (
            f"/api/v1/products/{product}/similar",
            "/api/v1/search?q=heart",
            f"/api/v1/users/{user}/recommendations",
            "/api/v1/popular",
            f"/api/v1/products/{product}/bought-together",
        )
        for _ in range(WARM_UP_ROUNDS):
            for path in paths:
                httpx.get(url + path, timeout=60.0).raise_for_status()
        self.wrk.run(url, [workload.WrkJob("mix", self.args.connections, WARM_UP_SECONDS)])
        self._drain(redis_url)
        self.sweep(url, SWEEPS)

    def sweep(self, url: str, passes: int) -> None:
        """Every path of `workload.sweep_paths`, `passes` times: each worker's neighbour cache
        and each shopper's kept list become as warm as in a service that has run a while (a
        product's first request of a worker computes its list; each event drops a list)."""
        started = time.monotonic()
        paths = workload.sweep_paths(self.data)
        asyncio.run(_sweep(url, [paths] * passes, self.args.connections))
        _progress(f"warm-up: {len(paths) * passes:,} requests swept in "
                  f"{time.monotonic() - started:.0f} s")  # fmt: skip

    def suite(self, under: Under, full: bool) -> None:
        """Per endpoint alone (`full` only), the mix at saturation, the mix at a fixed rate
        (with the freshness probe beside it, `full` only; `rate_runs` times, each after the
        service's stack alone at that rate, `full` only)."""
        args = self.args
        self.warm_up(under.url, under.redis_url)
        if full:
            for target in ("live", *workload.SHARES):
                job = workload.WrkJob(target, args.connections, args.duration)
                self.measure(under, "alone", [job])
            # The events run posts far more events than the mix would: its shoppers' lists
            # are computed again here, so that only the mix's own events drop lists in it.
            self.sweep(under.url, 1)
        self.measure(under, "mix", [workload.WrkJob("mix", args.connections, args.duration)])
        jobs = [
            workload.WrkJob(
                target,
                max(1, round(args.rate_connections * share)),
                args.rate_duration,
                args.rate * share,
            )
            for target, share in workload.SHARES.items()
        ]
        probe = None
        if full and args.freshness_trials:
            probe = freshness.Probe(
                under.url,
                self.data.products,
                args.freshness_trials,
                args.freshness_deadline,
                args.seed,
                period=args.freshness_period,
            )
        # The service's stack alone at the same rate, just before each run: what the machine
        # charges for requests that come one at a time, in that run's spell.
        stack = workload.WrkJob("live", args.rate_connections, args.duration, args.rate)
        for number in range(args.rate_runs if full else 1):
            if full:
                self.measure(under, STACK_AT_RATE, [stack])
            run = self.measure(under, "fixed rate", jobs, probe if number == 0 else None)
            if number == 0 and probe is not None and run.freshness is not None:
                self.clean_up(under, probe, run.freshness)

    def clean_up(self, under: Under, probe: freshness.Probe, seen: freshness.Freshness) -> None:
        """Delete the probe's copies; report how near its writes took the next refit."""
        with httpx.Client(base_url=under.url, timeout=PATIENCE) as http:
            seen.copies_deleted = probe.clean_up(http)
            self._drain(under.redis_url)  # the deletes count as changes once indexed
            model = http.get("/api/v1/admin/model").raise_for_status().json()
            seen.changes_since_fit = model["changes_since_fit"]
            seen.refit_due_at_changes = model["refit_due_at_changes"]
        _progress(f"freshness probe {seen.cleanup_text()}")


async def _sweep(url: str, passes: list[list[str]], connections: int) -> None:
    """GET every path of each pass, `connections` at a time, on new connections per pass:
    the workers share the connections out, so each gets a share of every pass's paths."""

    async def one_connection(queue: Iterator[str]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
            for path in queue:
                (await client.get(path)).raise_for_status()

    for paths in passes:
        queue = iter(paths)
        await asyncio.gather(*(one_connection(queue) for _ in range(connections)))


def _ratio(value: float, ceiling: float | None) -> float | None:
    return round(value / ceiling, 3) if ceiling else None


def _metrics_text(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=30.0).text


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _restore_import(data_dir: Path) -> None:
    if dataset.restore_import(data_dir):
        _progress(f"starting from the state the import left in {data_dir}")
    else:  # kept before imports were snapshotted
        _progress(f"reusing {data_dir} as earlier runs left it (import afresh to compare runs)")


def _redis_pid(data_dir: Path) -> int:
    return int((data_dir / "redis.pid").read_text().strip())


def _raise_file_limit(needed: int) -> None:
    """wrk and the server need a descriptor per connection; children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def _machine_busy(seconds: float = 1.0) -> float:
    """% of one core the machine spends busy right now (another benchmark skews the figures)."""
    before = servers.machine_ticks().busy
    time.sleep(seconds)
    return 100.0 * (servers.machine_ticks().busy - before) / servers.TICKS_PER_SECOND / seconds


def _wait_answering(url: str) -> None:
    """Until Redis answers PING (it does not while it loads its data)."""
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    deadline = time.monotonic() + PATIENCE
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.TimeoutError, redis.ConnectionError):
                if client.ping():
                    return
            time.sleep(0.2)
        raise TimeoutError(f"Redis at {url} did not answer within {PATIENCE:g}s")
    finally:
        client.close()


def _wait_index(url: str, namespace: str) -> None:
    """Until the live index has loaded every document again after a Redis start."""
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + PATIENCE
    try:
        names: Any = client.execute_command("FT._LIST")  # type: ignore[no-untyped-call]
        index, _ = knn.pick_live_index(names, namespace)
        while time.monotonic() < deadline:
            info: Any = client.ft(index).info()  # type: ignore[no-untyped-call]
            if not int(info["indexing"]):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{index} still indexing after {PATIENCE:g}s")
    finally:
        client.close()


def _serve_phase(
    bench: Bench, settings: Settings, data_dir: Path
) -> tuple[dataset.ImportReport | None, list[knn.KnnCeiling]]:
    """Import (or reuse), the KNN ceiling, then the full suite under `serve`."""
    args, data = bench.args, bench.data
    imported = None
    port = servers.free_port()
    url = f"http://{servers.HOST}:{port}"
    command = servers.SERVE.service(args.python, port, data_dir)
    log = bench.work / "service-serve.log"
    marker = data_dir / IMPORT_MARKER
    if marker.exists():
        _restore_import(data_dir)
    service = Server(command, log, servers.SERVICE_ENV)
    try:
        service.wait_answering(url, "/health/ready", PATIENCE)
        if not marker.exists():
            _progress(
                f"importing {len(data.products):,} products and {len(data.events):,} "
                "events through the API"
            )
            with httpx.Client(base_url=url, timeout=PATIENCE) as http:
                imported = dataset.import_through_api(http, data, PATIENCE)
            _progress(f"imported: {imported}")
            service.stop()  # its files at rest, for the compare phase and later runs
            dataset.keep_import(data_dir)
            service = Server(command, log, servers.SERVICE_ENV)
            service.wait_answering(url, "/health/ready", PATIENCE)
            marker.write_bytes(msgspec.json.encode(imported))
        with httpx.Client(base_url=url, timeout=PATIENCE) as http:
            dataset.wait_caught_up(http, {}, PATIENCE)
        redis_url, redis_pid = f"unix://{data_dir / 'redis.sock'}", _redis_pid(data_dir)
        _progress("store ceiling: raw KNN through redis-py, the service idle")
        ceilings = asyncio.run(
            knn.measure(
                redis_url,
                settings.redis.namespace,
                settings.vectors.hnsw_ef_runtime,
                [product["id"] for product in data.products],
                redis_pid=redis_pid,
                tasks=args.knn_tasks,
                seconds=args.duration,
                max_queries=1_000_000,
                seed=args.seed,
            )
        )
        bench.knn_qps = ceilings[0].qps  # the query the similar route sends
        _progress(f"KNN: {ceilings}")
        http_ceiling = bench.http_ceiling(servers.SERVE)
        under = Under(
            "serve", url, service.pid, redis_url, redis_pid, http_ceiling, pooled_metrics=True
        )
        bench.suite(under, full=True)
    finally:
        service.stop()
        bench.log_problems["serve"] = service.log_problems()
    return imported, ceilings


def _compare_phase(bench: Bench, kinds: list[ServerKind], namespace: str, data_dir: Path) -> None:
    """The other servers on the same data, against an embedded Redis started here."""
    args = bench.args
    quiet_logs()
    _restore_import(data_dir)
    embedded = EmbeddedRedis(EmbeddedRedisSettings(data_dir=str(data_dir)))
    try:
        embedded.start()
    except redis.TimeoutError:
        # EmbeddedRedis retries BusyLoadingError and ConnectionError but not a PING timing out
        # while Redis replays a large AOF; the server it launched is still loading: wait here.
        _wait_answering(embedded.url)
    with contextlib.closing(embedded):
        _wait_index(embedded.url, namespace)
        redis_pid = _redis_pid(data_dir)
        for kind in kinds:
            http_ceiling = bench.http_ceiling(kind)
            port = servers.free_port()
            url = f"http://{servers.HOST}:{port}"
            env = {**servers.SERVICE_ENV, "RECOMMENDER_REDIS__URL": embedded.url}
            log = bench.work / f"service-{kind.name}.log"
            service = Server(kind.service(args.python, port, data_dir), log, env)
            try:
                service.wait_answering(url, "/health/ready", PATIENCE)
                with httpx.Client(base_url=url, timeout=PATIENCE) as http:
                    dataset.wait_caught_up(http, {}, PATIENCE)
                single = kind.name.endswith("-w1")
                under = Under(
                    kind.name, url, service.pid, embedded.url, redis_pid, http_ceiling, single
                )
                bench.suite(under, full=False)
            finally:
                service.stop()
                bench.log_problems[kind.name] = service.log_problems()


def run(args: argparse.Namespace, work: Path) -> Report:
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    busy_before = _machine_busy()
    _progress(f"machine busy before the run: {busy_before:.0f}% of a core; converting the data")
    settings = load_settings()
    data = dataset.convert(work)
    bench = Bench(args, work, data, settings.redis.namespace)
    data_dir = (args.data_dir or work / "data").resolve()
    kinds = [servers.SERVE, *(servers.KINDS[name] for name in args.compare)]
    infos = [
        ServerInfo(
            name=kind.name,
            description=kind.description,
            python=args.python,
            skipped=servers.missing_module(args.python, kind.module),
        )
        for kind in kinds
    ]
    if infos[0].skipped:
        raise SystemExit(f"cannot run the service: {infos[0].skipped}")
    imported, ceilings = _serve_phase(bench, settings, data_dir)
    others = [kind for kind, info in zip(kinds[1:], infos[1:], strict=True) if not info.skipped]
    if others:
        _compare_phase(bench, others, settings.redis.namespace, data_dir)
    return Report(
        command=shlex.join(["python", "-m", "benchmarks.load", *sys.argv[1:]]),
        started_at=started_at,
        seconds=round(time.monotonic() - started, 1),
        cpus=os.cpu_count() or 0,
        machine_busy_before=round(busy_before, 1),
        wrk=_wrk_version(),
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        dataset={
            "products": len(data.products),
            "events": len(data.events),
            "users": len(data.users),
        },
        imported=imported,
        knn=ceilings,
        servers=[
            msgspec.structs.replace(info, log_problems=bench.log_problems.get(info.name, {}))
            for info in infos
        ],
        runs=bench.runs,
    )


def _wrk_version() -> str:
    output = subprocess.run(
        ["wrk", "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    return (output.stdout or output.stderr).splitlines()[0].split("[")[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.compare = [name for name in args.compare.split(",") if name]
    unknown = [name for name in args.compare if name not in servers.KINDS or name == "serve"]
    if unknown:
        parser.error(f"--compare: unknown server(s) {', '.join(unknown)}")
    if args.rate_connections / args.rate >= args.timeout / 2:
        # wrk counts a connection idle for longer than its timeout as a timeout.
        parser.error("--rate-connections / --rate must stay under half of --timeout")
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2
    _raise_file_limit(2 * args.rate_connections + 256)
    if args.data_dir is not None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        report = run(args, Path(tmp))
    print(render(report))
    args.json.write_bytes(msgspec.json.format(msgspec.json.encode(report)))
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
