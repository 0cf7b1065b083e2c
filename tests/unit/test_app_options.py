"""The Serve options `build_app` gives the ingress: bounded queue, refusals like the router's."""

from __future__ import annotations

from deployments.app import build_app
from deployments.errors import QueueFull


def test_a_full_router_queue_is_refused_with_the_routers_own_answer(demo_dir):
    app = build_app(
        {
            "data_dir": str(demo_dir),
            "reranker": {"enabled": False},
            "router": {"max_ongoing_requests": 40, "max_queued_requests": 7},
        }
    )
    router = app._bound_deployment  # the ingress deployment, as Serve will deploy it
    assert router.max_ongoing_requests == 40 and router.max_queued_requests == 7
    assert router.backpressure_config.status_code == QueueFull.status == 503
    assert router.backpressure_config.retry_after_s == QueueFull.retry_after_s
