"""shared.aws: one boto3 session per process and one client per (service, endpoint, credentials, config)."""
from __future__ import annotations

import os

import pytest

from shared import aws


def test_the_same_client_is_returned_for_the_same_service_and_config(settings):
    assert aws.client("s3", settings) is aws.client("s3", settings)
    assert aws.client("sqs", settings) is not aws.client("s3", settings)
    assert aws.sqs_long_poll_client(settings) is not aws.client("sqs", settings)   # another read timeout
    assert aws.sqs_long_poll_client(settings) is aws.sqs_long_poll_client(settings)


def test_another_endpoint_or_credentials_in_the_environment_get_clients_of_their_own(settings):
    first = aws.client("s3", settings)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        other = aws.client("s3", settings)
        assert other is not first and other.meta.endpoint_url == "http://127.0.0.1:9"
    assert aws.client("s3", settings) is first
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "another-key")
        assert aws.client("s3", settings) is not first
    assert first.meta.endpoint_url == os.environ["AWS_ENDPOINT_URL"]


def test_a_shared_client_still_reaches_the_endpoint(settings):
    s3 = aws.client("s3", settings)
    s3.create_bucket(Bucket=f"{settings.prefix}-clients")
    assert f"{settings.prefix}-clients" in [b["Name"] for b in aws.client("s3", settings).list_buckets()["Buckets"]]
