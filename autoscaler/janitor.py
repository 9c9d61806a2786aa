"""The reply-queue janitor: deletes reply queues whose web process stopped beating (killed, crashed).

A web process tags its reply queue with its owner, creation time and a heartbeat it renews
(webserver/replies.py). A queue whose heartbeat is older than the grace period belongs to no one:
replies that were in it are also in S3 as result records, so deleting it loses nothing.
"""
from __future__ import annotations

import logging
import time

from shared import naming
from shared.config import Settings
from shared.transport import Transport, TransportError

log = logging.getLogger(__name__)


class ReplyQueueJanitor:
    """sweep() deletes orphan reply queues of this prefix; maybe_sweep() does it at most every interval."""

    def __init__(self, settings: Settings, transport: Transport, clock=time.time):
        self.settings = settings
        self.transport = transport
        self.clock = clock
        self._last = -float("inf")
        self.deleted: list[str] = []

    def maybe_sweep(self) -> list[str]:
        """Sweep when janitor_interval_s has passed; never raises (a failed sweep is retried next time)."""
        interval = self.settings.janitor_interval_s
        if interval <= 0 or self.clock() - self._last < interval:
            return []
        self._last = self.clock()
        try:
            return self.sweep()
        except TransportError as exc:
            log.warning("janitor: sweep failed: %s", exc)
            return []

    def sweep(self) -> list[str]:
        """Delete every reply queue whose last heartbeat (or creation) is older than the grace period."""
        now_ms = self.clock() * 1000
        grace_ms = self.settings.reply_queue_grace_s * 1000
        gone = []
        for url in self.transport.list_queues(naming.reply_queue_prefix(self.settings.prefix)):
            seen = self._last_seen_ms(url)
            if seen is None or now_ms - seen <= grace_ms:
                continue
            try:
                self.transport.delete_queue(url)   # one deleted meanwhile (its owner closed it) counts as deleted
            except TransportError as exc:          # not ours to delete (permissions)
                log.info("janitor: %s not deleted: %s", url, exc)
                continue
            tail = url.rsplit("/", 1)[-1]
            log.warning("janitor: deleted orphan reply queue %s (owner silent %.0f s)", tail,
                        (now_ms - seen) / 1000)
            gone.append(url)
        self.deleted.extend(gone)
        return gone

    def _last_seen_ms(self, url: str) -> float | None:
        """The owner's last heartbeat, else the creation tag, else the queue's CreatedTimestamp."""
        try:
            tags = self.transport.tags(url)
            for key in (naming.REPLY_TAG_BEAT, naming.REPLY_TAG_CREATED):
                if key in tags:
                    return float(tags[key])
            return float(self.transport.attributes(url, ["CreatedTimestamp"])["CreatedTimestamp"]) * 1000
        except TransportError as exc:   # gone between listing and looking
            log.debug("janitor: %s unreadable: %s", url, exc)
            return None
        except (KeyError, ValueError):
            log.warning("janitor: %s has unreadable tags; left alone", url)
            return None
