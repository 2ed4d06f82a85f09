"""The lead worker's webhook senders: one thread per receiver, so a slow or dead receiver delays
only its own events. Each thread posts its URL's oldest pending event, records the answer, and
waits with backoff after a failure; what it has not recorded as delivered is sent again after a
restart (at least once: the receiver deduplicates by X-RTGW-Event-Id)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from orthanc_plugin.db import database_errors
from orthanc_plugin.webhooks.model import Endpoint, redacted
from orthanc_plugin.webhooks.payload import body_of, build_payload, event_id
from orthanc_plugin.webhooks.signing import signed_headers
from orthanc_plugin.webhooks.store import WebhookStore
from orthanc_plugin.webhooks.transport import Post

# A new event is noticed within this long (one indexed query per URL per round when idle).
POLL_SECONDS = 1.0
# Delivered rows are kept this long for the page's counts, then pruned (checked hourly).
KEEP_DELIVERED_SECONDS = 7 * 86400.0
PRUNE_EVERY_SECONDS = 3600.0


class EndpointSender:
    def __init__(self, endpoint: Endpoint, store: WebhookStore, origin: str, post: Post,
                 log: Callable[[str], None]) -> None:
        self.endpoint = endpoint
        self.store = store
        self.origin = origin
        self.post = post
        self.log = log
        self.failing = False

    def attempt(self, now: float | None = None) -> bool:
        """One attempt at the URL's next due event; True when it was delivered (look again now)."""
        now = time.time() if now is None else now
        row = self.store.next_due(self.endpoint.url, now)
        if row is None:
            return False
        body = body_of(build_payload(row, self.origin, self.endpoint.include_patient_data))
        headers = signed_headers(self.endpoint.secret, int(time.time()), body,
                                 event_id(self.origin, int(row.id)), str(row.event))
        error = self.post(self.endpoint.url, body, headers, self.endpoint.timeout_seconds)
        where = redacted(self.endpoint.url)
        if not error:
            self.store.delivered(self.endpoint.url, int(row.id))
            if self.failing:
                self.failing = False
                self.log(f"webhook {where}: delivering again")
            return True
        delay = self.store.failed(self.endpoint.url, int(row.id), error, now)
        if not self.failing:  # once per episode, not once per retry
            self.failing = True
            self.log(f"webhook {where}: {row.event} event {row.id} not delivered ({error}); "
                     f"retrying with backoff, next in {delay:g} s; later events wait in order")
        return False


class WebhookSenders:
    def __init__(self, senders: list[EndpointSender], store: WebhookStore,
                 log: Callable[[str], None]) -> None:
        self.senders = senders
        self.store = store
        self.log = log
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.threads:
            return
        self.stopping.clear()
        for index, sender in enumerate(self.senders):
            thread = threading.Thread(target=self._loop, args=(sender, index == 0),
                                      name=f"rtgw-webhook-{index}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            # A post in flight ends within its timeout; a daemon thread does not hold the exit.
            thread.join(5)
        self.threads = []

    def _loop(self, sender: EndpointSender, prunes: bool) -> None:
        pruned_at = 0.0
        while not self.stopping.is_set():
            try:
                if prunes and time.monotonic() - pruned_at >= PRUNE_EVERY_SECONDS:
                    pruned_at = time.monotonic()
                    self.store.prune(KEEP_DELIVERED_SECONDS)
                if sender.attempt():
                    continue
            except database_errors() as error:  # a locked or full database: this round only
                self.log(f"webhook {redacted(sender.endpoint.url)}: round stopped for now: {error}")
            self.stopping.wait(POLL_SECONDS)
