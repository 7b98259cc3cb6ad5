"""The runtime: built from settings, sized as they say, and nothing built at import time."""

from __future__ import annotations

from tests.conftest import TEST_DATABASE_URL
from workers.config import Settings
from workers.jobs.runtime import Runtime


def test_the_pool_size_defaults_to_the_worker_threads_and_four_more():
    assert Settings.from_env({}).database_pool_size == 12
    assert Settings.from_env({"WORKER_THREADS": "16"}).database_pool_size == 20
    assert Settings.from_env({"DATABASE_POOL_SIZE": "5"}).database_pool_size == 5


def test_the_runtime_opens_its_pool_with_the_size_the_settings_give(database_url):
    url = f"{TEST_DATABASE_URL}?application_name=sized"  # a URL of its own, hence a pool of its own
    runtime = Runtime(Settings.from_env({"DATABASE_URL": url, "DATABASE_POOL_SIZE": "3"}))
    try:
        assert runtime.pool.max_size == 3
        with runtime.pool.connection() as conn:
            assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}
    finally:
        runtime.close()
