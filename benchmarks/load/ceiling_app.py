"""The HTTP stack's ceiling: a minimal Litestar app that answers `GET /` with constant JSON.

No middleware, no dependency, no Redis: what the ASGI server and Litestar's routing and JSON
encoding cost on their own. The load benchmark drives it with the same `wrk` settings as the
service, under the same server with the same flags:

    python -m benchmarks.load.ceiling_app --port P      # uvicorn.run exactly as `serve` calls it
    python -m uvicorn benchmarks.load.ceiling_app:app   # or granian, for the other servers
"""

import argparse

import uvicorn
from litestar import Litestar, get

from recommender.config import load_settings
from recommender.platform.http_protocol import WriteCombiningHttpToolsProtocol

ANSWER: dict[str, object] = {"status": "ok", "items": []}


@get("/", sync_to_thread=False)
def constant() -> dict[str, object]:
    return ANSWER


app = Litestar(route_handlers=[constant], openapi_config=None, logging_config=None)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the ceiling app as `serve` serves the app.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings()
    # The keyword arguments of `recommender.cli.serve_command`, so only the app differs.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http=WriteCombiningHttpToolsProtocol,
        proxy_headers=True,
        forwarded_allow_ips=settings.server.forwarded_allow_ips,
        timeout_graceful_shutdown=int(settings.server.graceful_shutdown_seconds),
        log_config=None,
    )


if __name__ == "__main__":
    main()
