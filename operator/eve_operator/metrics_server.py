"""The operator's /metrics endpoint (aiohttp, on the kopf event loop)."""

from __future__ import annotations

import logging
from typing import Any

from eve_operator import metrics

log = logging.getLogger("eve_operator")


async def serve_metrics(port: int) -> Any:
    """Serve metrics.render() on :port/metrics; returns the runner (call .cleanup() to stop)."""
    from aiohttp import web

    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    log.info("metrics on :%d/metrics", port)
    return runner
