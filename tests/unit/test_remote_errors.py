"""The router's handle wrapper: the one place Ray's failures become the project's errors."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from ray.serve.exceptions import BackPressureError

from deployments.errors import BackendFailed, BackendUnavailable, NotFound, QueueFull
from deployments.router.deployment import _Remote


class FailingHandle:
    """A stand-in `DeploymentHandle` whose every call fails with `error`."""

    deployment_name = "Encoder"

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __getattr__(self, method: str):
        error = self.error

        class Method:
            @staticmethod
            def remote(*args):
                class Response:
                    def __await__(self):
                        async def fail():
                            raise error

                        return fail().__await__()

                    def cancel(self) -> None:
                        pass

                return Response()

        return Method()


def call(error: BaseException):
    return asyncio.run(_Remote(FailingHandle(error)).encode("a text"))


@pytest.mark.parametrize("error", [ActorDiedError(), ActorUnavailableError("gone", b"\x00" * 16)])
def test_a_replica_that_does_not_answer_is_backend_unavailable_naming_only_the_deployment(error):
    with pytest.raises(BackendUnavailable) as caught:
        call(error)
    assert isinstance(caught.value, BackendFailed) and caught.value.status == 502
    assert caught.value.message == "Encoder did not answer"


def test_a_full_queue_is_queue_full_and_an_api_error_passes_as_it_is():
    with pytest.raises(QueueFull):
        call(BackPressureError(num_queued_requests=5, max_queued_requests=5))
    with pytest.raises(NotFound, match="unknown item"):
        call(NotFound("unknown item '7'"))


def test_a_bug_in_the_replica_is_not_turned_into_an_outage():
    bug = RayTaskError("encode", "Traceback: KeyError", KeyError("oops"))
    with pytest.raises(RayTaskError):
        call(bug)


def test_a_bug_answers_500_with_a_logged_reference_and_no_traceback(caplog):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from deployments.router.deployment import _internal_error

    app = FastAPI()
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/boom")
    async def boom():
        raise KeyError("secret internals")

    with caplog.at_level("ERROR"):
        r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "internal" and "secret" not in r.text
    reference = error["message"].removeprefix("internal error (reference ").rstrip(")")
    assert any(reference in rec.getMessage() and rec.exc_info for rec in caplog.records)
