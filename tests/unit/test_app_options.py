"""The Serve options `build_app` gives: the ingress's bounded queue and refusals like the
router's, and Serve's access log on the ingress only."""

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


def test_only_the_ingress_keeps_serves_access_log_unless_asked(demo_dir):
    def access_logs(extra: dict) -> dict[str, bool]:
        """Each deployment's name and whether Serve writes its access log."""
        app = build_app({"data_dir": str(demo_dir), "reranker": {"enabled": False}, **extra})
        router = app._bound_deployment
        _, encoder, shards, _ = router.init_args
        deployments = [router] + [a._bound_deployment for a in (encoder, *shards)]
        return {
            d.name: (d.logging_config or {}).get("enable_access_log", True) for d in deployments
        }

    quiet = access_logs({})
    assert quiet.pop("Router") is True
    assert {"Encoder", "ShardRetriever-0"} <= quiet.keys() and not any(quiet.values())
    assert all(access_logs({"internal_access_log": True}).values())
