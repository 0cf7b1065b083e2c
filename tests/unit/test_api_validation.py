import json

import pytest

from deployments.errors import InvalidInput, PayloadTooLarge
from deployments.router.http import error_response, parse_recommend, server_timing
from retrieval.config import AppConfig, EncoderConfig


def parse(body: dict, limit: int = 65536):
    return parse_recommend(json.dumps(body).encode(), limit)


def test_valid_request_parses_with_defaults():
    req = parse({"query": "space", "filters": {"category": ["Drama"]}})
    assert req.k == 10 and req.exclude_seen and not req.rerank
    assert req.filters.category == ["Drama"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": 101}, "k"),
        ({"query": "x", "colour": "red"}, "colour"),
        ({"k": 5}, "body"),
        ({"query": "x", "filters": {"genre": ["a"]}}, "filters.genre"),
        ({"history": "1"}, "history"),
    ],
)
def test_invalid_requests_name_the_field(body, field):
    with pytest.raises(InvalidInput) as err:
        parse(body)
    assert err.value.status == 422
    assert err.value.field == field


def test_missing_signal_is_explained():
    with pytest.raises(InvalidInput, match="at least one of user_id, history, query"):
        parse({"k": 3})


def test_malformed_json_is_422_not_500():
    with pytest.raises(InvalidInput):
        parse_recommend(b"{not json", 1000)


def test_oversized_body_is_413():
    with pytest.raises(PayloadTooLarge):
        parse({"query": "x" * 2000}, limit=1024)


def test_error_response_carries_status_and_retry_after():
    from deployments.errors import Overloaded

    r = error_response(Overloaded("busy"))
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert json.loads(r.body) == {"error": {"type": "overloaded", "message": "busy"}}


def test_server_timing_header():
    assert server_timing({"encode": 3.1, "total": 9.0}) == "encode;dur=3.1, total;dur=9.0"


def test_config_cross_field_check_names_the_setting():
    with pytest.raises(ValueError, match="encoder.max_ongoing_requests"):
        EncoderConfig(max_batch_size=128, max_ongoing_requests=64)
    with pytest.raises(ValueError):
        AppConfig.model_validate({"encoder": {"num_replicas": 0}})
    with pytest.raises(ValueError):
        AppConfig.model_validate({"no_such_knob": 1})
