"""`--record.path`: every upstream exchange of this process appended to a recording, off the
scrape's path.

The upstream client hands each exchange to `Recorder.exchange`, which only puts it on a bounded
queue (a scrape never waits for a disk). A writer thread decodes, scrubs and writes it: one
`write` per whole line, unbuffered, so a process killed at any moment leaves whole lines
only. A full queue drops the exchange and says so once; a recording that would grow past
`--record.max-size` stops with one warning.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from exporter.logs import log
from exporter.redact import Redact
from exporter.scrub import Scrubber

logger = logging.getLogger("exporter.recorder")

# Exchanges waiting for the writer, at most; and their bodies' bytes, at most. A writer that
# falls this far behind (a slow disk) costs lines, never the scrapes' memory or time.
QUEUE_LINES = 10_000
QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_SIZE = 256 * 1024 * 1024
# Headers of an answer a recording keeps: what shapes how the exporter reads it.
KEPT_HEADERS = ("content-type", "retry-after")

# One exchange as the upstream client hands it over: (seconds since the start, source, path,
# query, status, headers, body, error); encoded by the writer thread.
_Item = tuple[float, str, str, list[tuple[str, str]], int | None, dict[str, str], bytes, str | None]


class RecordError(Exception):
    """The recording cannot be written; the message names the file."""


class Recorder:
    """One recording: its file, the queue in front of it and the thread that writes it."""

    def __init__(self, path: str, max_size: int, redact: Redact, *, keep_text: bool) -> None:
        self.path = path
        self.max_size = max_size
        self.redact = redact
        self.keep_text = keep_text
        try:
            # Opened at start-up, so that a path that cannot be written stops the exporter
            # before it serves anything; truncated: one recording per process.
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise RecordError(f"{path}: cannot write: {exc.strerror or exc}") from None
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._queued_lines = 0
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._dropped = 0
        self._written = 0
        self._stopped = False  # past max_size, or closed
        self._started = time.monotonic()
        self._scrubber: Scrubber | None = None
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        return self._dropped

    def start(self, head: Mapping[str, Any], hosts: Iterable[str]) -> None:
        """Write the header line `head` and start the writer; `hosts` (the upstreams') are
        masked wherever an answer names them. `exporter.recordfile.start` makes both."""
        self._scrubber = Scrubber(self.redact, hosts, keep_text=self.keep_text)
        self._started = time.monotonic()
        self._write(head)
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def exchange(
        self,
        source: str,
        path: str,
        query: Sequence[tuple[str, str]] | Mapping[str, str],
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        error: str | None = None,
    ) -> None:
        """Queue one exchange (an answer, or `error` "timeout" or "connection"); never waits."""
        if self._stopped or self._thread is None:
            return
        pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
        with self._lock:
            full = self._queued_lines >= QUEUE_LINES or self._queued_bytes >= QUEUE_BYTES
            if not full:
                self._queued_lines += 1
                self._queued_bytes += len(body)
        if full:
            self._dropped += 1
            if self._dropped == 1:
                log(
                    logger,
                    logging.WARNING,
                    "recording falls behind; exchanges are dropped from it",
                    path=self.path,
                )
            return
        t = round(time.monotonic() - self._started, 3)
        self._queue.put((t, source, path, pairs, status, dict(headers or {}), body, error))

    def close(self) -> None:
        """Write what is queued, then stop and close the file."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
        self._stopped = True
        os.close(self._fd)

    # --- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            with self._lock:
                self._queued_lines -= 1
                self._queued_bytes -= len(item[6])
            if self._stopped:
                continue
            try:
                self._write(self._line(item))
            except Exception:  # a bad answer must cost its line, not the recording
                logger.exception("could not record an exchange")

    def _line(self, item: _Item) -> dict[str, Any]:
        t, source, path, query, status, headers, body, error = item
        scrub = self._scrubber
        assert scrub is not None
        line: dict[str, Any] = {
            "t": t,
            "source": source,
            "method": "GET",
            "path": scrub.text(path),
            "query": [[scrub.text(k), scrub.text(v)] for k, v in query],
        }
        if error is not None:
            line["error"] = error
            return line
        line["status"] = status
        line["headers"] = {k: scrub.text(v) for k, v in headers.items() if k in KEPT_HEADERS}
        if not body:
            line["body"] = ""
            return line
        try:
            line["body"] = scrub.body(json.loads(body))
        except (ValueError, RecursionError):
            line["body"] = scrub.raw(body.decode("utf-8", "replace"))
        return line

    def _write(self, data: Mapping[str, Any]) -> None:
        encoded = (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        if self._written + len(encoded) > self.max_size:
            self._stopped = True
            log(
                logger,
                logging.WARNING,
                "recording stopped: it reached --record.max-size",
                path=self.path,
                max_size=self.max_size,
            )
            return
        view = memoryview(encoded)
        while view:  # one call nearly always; a regular file may take a line in parts
            view = view[os.write(self._fd, view) :]
        self._written += len(encoded)
