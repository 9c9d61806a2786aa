"""`classifycloud dlq list|redrive`: what is dead-lettered, and sending it back to its request queue."""
from __future__ import annotations

import argparse
import datetime
import json
import sys

from botocore.exceptions import ClientError

from autoscaler.deadletters import CODE, read_dead_letters, release_all
from shared import naming
from shared.aws import client
from shared.catalogue import catalogue_for
from shared.config import Settings
from shared.live_catalogue import LiveCatalogue
from shared.transport import QueueGone, Transport


def _dlqs(settings: Settings, transport: Transport, only: str | None) -> dict[str, str]:
    out = {}
    for service in LiveCatalogue(settings, catalogue_for(settings)).names():   # services published to S3 too
        if only and service != only:
            continue
        try:
            out[service] = transport.url(naming.dead_letter_queue(settings.prefix, service))
        except QueueGone:
            continue
    return out


def _reason(settings: Settings, s3, request_id: str | None) -> str:
    if request_id is None:
        return "unreadable message (no request id)"
    try:
        rec = json.loads(s3.get_object(Bucket=settings.bucket_name, Key=naming.result_key(request_id))["Body"].read())
        if (rec.get("error") or {}).get("code") == CODE:
            return rec["error"]["message"]
    except (ClientError, ValueError):
        pass
    return "not settled yet"


def list_dead_letters(settings: Settings, only: str | None = None, out=print) -> int:
    """Print every dead-lettered message (peeked: each comes back visible within seconds); returns the count."""
    transport, s3 = Transport(settings), client("s3", settings)
    n = 0
    out(f"{'service':12s} {'request id':38s} {'sent (UTC)':20s} reason")
    for service, url in _dlqs(settings, transport, only).items():
        letters = read_dead_letters(transport, url, service, limit=1000, hold_s=5)
        for dl in letters:
            sent = datetime.datetime.fromtimestamp(dl.sent_at_ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            out(f"{service:12s} {dl.request_id or '-':38s} {sent:20s} {_reason(settings, s3, dl.request_id)}")
            n += 1
        release_all(transport, url, letters)  # peek, not take: visible again now
    out(f"{n} dead-lettered message(s)")
    return n


def redrive(settings: Settings, only: str | None = None, limit: int = 1000, out=print) -> int:
    """Send dead-lettered requests back to their request queue (their dead_lettered record removed first)."""
    transport, s3 = Transport(settings), client("s3", settings)
    moved = 0
    for service, url in _dlqs(settings, transport, only).items():
        target = transport.request_queue_url(service)
        for dl in read_dead_letters(transport, url, service, limit=limit - moved, hold_s=60):
            if dl.request_id is not None:
                if _reason(settings, s3, dl.request_id) != "not settled yet":
                    # else the worker would answer the redelivery from the dead_lettered record
                    s3.delete_object(Bucket=settings.bucket_name, Key=naming.result_key(dl.request_id))
                s3.delete_object(Bucket=settings.bucket_name, Key=naming.failure_key(dl.request_id))
            transport.send(target, dl.body)
            deleted = transport.delete_batch(url, [(dl.message_id, dl.receipt_handle)])   # after the send: never lost
            if not deleted.ok:   # it comes back visible after hold_s and is redriven again: a duplicate, not a loss
                out(f"warning: {dl.message_id} sent back but not deleted from the DLQ: {deleted.failed[0].message}")
            moved += 1
            out(f"redriven {service} {dl.request_id or dl.message_id}")
    out(f"{moved} message(s) sent back to their request queues")
    return moved


def main(argv: list[str] | None = None) -> int:
    """Entry point of `classifycloud dlq`."""
    p = argparse.ArgumentParser(prog="classifycloud dlq", description=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="list dead-lettered requests and why")
    ls.add_argument("--service", default=None)
    rd = sub.add_parser("redrive", help="send dead-lettered requests back to their request queue")
    rd.add_argument("--service", default=None)
    rd.add_argument("--limit", type=int, default=1000)
    args = p.parse_args(argv)
    settings = Settings.from_env()
    if args.action == "list":
        list_dead_letters(settings, args.service)
    else:
        redrive(settings, args.service, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
