"""The retry policies, and the latest instant a retry can start (the relays' threshold)."""

from __future__ import annotations

from dramatiq.common import compute_backoff
from dramatiq.message import Message

from workers.jobs import retry


def test_no_delay_dramatiq_draws_is_later_than_the_latest_the_relays_wait_for():
    for policy in (retry.EVENTS, retry.EMAILS):
        for retries in range(40):
            latest = retry.latest_delay_ms(retries, policy.min_backoff_ms, policy.max_backoff_ms)
            for _ in range(200):
                _, delay = compute_backoff(
                    retries, factor=policy.min_backoff_ms, max_backoff=policy.max_backoff_ms
                )
                assert delay <= latest


def test_every_retry_comes_within_30_seconds_and_the_windows_stay_two_hours_and_a_day():
    def window_hours(policy: retry.RetryPolicy) -> float:
        total = sum(
            retry.latest_delay_ms(n, policy.min_backoff_ms, policy.max_backoff_ms) * 0.75
            for n in range(policy.max_retries)
        )  # dramatiq draws 50-100 % of the largest delay once it is reached
        return total / 3_600_000

    assert retry.EVENTS.max_backoff_ms == retry.EMAILS.max_backoff_ms == 30_000
    assert 1.5 < window_hours(retry.EVENTS) < 2.5
    assert 20 < window_hours(retry.EMAILS) < 28


def test_a_job_is_named_by_its_message_and_retry_number_and_the_message_options_win():
    message = Message(
        queue_name="default", actor_name="send_email", args=(7,), kwargs={},
        options={"retries": 3, "max_retries": 3, "min_backoff": 100, "max_backoff": 500},
    )  # fmt: skip

    job = retry.job_of(message, retry.EMAILS)

    assert job.token == f"{message.message_id}/3"
    assert job.next_token == f"{message.message_id}/4"
    assert job.retry_within_seconds == 0.5 and job.final
    assert retry.job_of(None, retry.EMAILS).final  # run outside a worker: no retry to wait for
