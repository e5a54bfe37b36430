"""A steady trickle of events into an ingest URL, as an SDK sends them: each batch retried until
accepted (same message ids, so a retry can never count twice), every answer recorded. Runs in a
thread of its own so the caller can kill servers meanwhile."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
import uuid


class SteadyLoad:
    BATCH = 10
    PAUSE_S = 0.05  # between accepted batches: about 200 events/s
    RETRY_S = 0.2  # after a refusal; an SDK would honour Retry-After, this probes faster

    def __init__(self, ingest_url: str, write_key: str) -> None:
        self.url = f"{ingest_url}/v1/batch"
        self.auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.accepted: list[str] = []
        self.statuses: dict[int, int] = {}
        self.unanswered = 0  # no HTTP answer at all (connection refused, timeout)
        self.last_accepted_at = 0.0
        self.refused_since: float | None = None
        self._stop = threading.Event()
        self._run_id = uuid.uuid4().hex[:8]

    def stop(self) -> None:
        self._stop.set()

    def accepted_after(self, moment: float) -> bool:
        return self.last_accepted_at > moment

    def run(self) -> None:
        batch_no = 0
        while not self._stop.is_set():
            ids = [f"{self._run_id}-{batch_no}-{i}" for i in range(self.BATCH)]
            body = json.dumps(
                {
                    "batch": [
                        {"type": "track", "event": "tick", "userId": f"u{i}", "messageId": m}
                        for i, m in enumerate(ids)
                    ]
                }
            ).encode()
            while not self._stop.is_set():
                if self._send(body):
                    self.accepted.extend(ids)
                    self.last_accepted_at = time.monotonic()
                    break
                time.sleep(self.RETRY_S)
            batch_no += 1
            time.sleep(self.PAUSE_S)

    def _send(self, body: bytes) -> bool:
        request = urllib.request.Request(
            self.url,
            data=body,
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        except (urllib.error.URLError, OSError):
            self.unanswered += 1
            return False
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status == 200
