"""The Flask example served by a real WSGI server (werkzeug's, threaded), hit
by a real HTTP client: GETs read on replicas, a POST's token brings its
reader back to what it wrote while no replica replays anything."""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from routing_db import SyncRouter
from routing_db.testing import PostgresCluster
from routing_db.wsgi import DEFAULT_TOKEN_HEADER

EXAMPLE = Path(__file__).parent.parent / "examples" / "flask_app.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("flask_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered, so SQLAlchemy can resolve the models' annotations.
    sys.modules["flask_example"] = module
    spec.loader.exec_module(module)
    return module


example = load_example()
Base, create_app = example.Base, example.create_app


@pytest.fixture(params=[True])
def client(
    schema: PostgresCluster, request: pytest.FixtureRequest
) -> Iterator[tuple[httpx.Client, PostgresCluster]]:
    """The app on a WSGI server: threaded, or (False) every request on the
    server's one thread, whose context would carry over if anything leaked."""
    cluster = schema.with_driver("psycopg2")
    router = SyncRouter.from_urls(
        cluster.writer_url, cluster.replica_urls, monitor_interval=0.2
    )
    Base.metadata.drop_all(router.writer)
    Base.metadata.create_all(router.writer)
    cluster.wait_replicated()
    server = make_server("127.0.0.1", 0, create_app(router), threaded=request.param)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    with router:
        serving.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as http:
                yield http, cluster
        finally:
            server.shutdown()
            serving.join()
            Base.metadata.drop_all(router.writer)


@pytest.mark.parametrize("client", [False], indirect=True)
def test_gets_read_on_replicas_and_a_token_reads_its_own_write(
    client: tuple[httpx.Client, PostgresCluster],
) -> None:
    http, cluster = client
    replicas = {node.port for node in cluster.replicas}
    served = {http.get("/notes").json()["served_by"]["port"] for _ in range(6)}
    assert served == replicas
    for index in range(len(cluster.replicas)):
        cluster.pause_replay(index)
    try:
        posted = http.post("/notes", json={"body": "mine"})
        assert posted.status_code == 201
        token = posted.headers[DEFAULT_TOKEN_HEADER]
        with_token = http.get("/notes", headers={DEFAULT_TOKEN_HEADER: token}).json()
        assert with_token["notes"] == ["mine"]  # never stale: the writer served
        assert with_token["served_by"] == {
            "port": cluster.primary.port,
            "standby": False,
        }
        # The next requests, on the same server thread, carry nothing over.
        for _ in range(4):
            other = http.get("/notes").json()
            assert other["served_by"]["standby"] is True
            assert other["notes"] == []  # the replicas have not replayed it
    finally:
        for index in range(len(cluster.replicas)):
            cluster.resume_replay(index)
    bad = http.get("/notes", headers={DEFAULT_TOKEN_HEADER: "garbage"})
    assert bad.status_code == 400 and "malformed" in bad.json()["detail"]


def test_concurrent_requests_do_not_share_their_context(
    client: tuple[httpx.Client, PostgresCluster],
) -> None:
    http, cluster = client
    errors: list[BaseException] = []

    def post_then_get() -> None:
        try:
            for n in range(10):
                token = http.post("/notes", json={"body": f"n{n}"}).headers[
                    DEFAULT_TOKEN_HEADER
                ]
                notes = http.get("/notes", headers={DEFAULT_TOKEN_HEADER: token}).json()
                assert f"n{n}" in notes["notes"]
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=post_then_get) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert (
        cluster.sql(cluster.primary, "SELECT count(*) FROM routing_db_demo_notes")
        == "80"
    )
