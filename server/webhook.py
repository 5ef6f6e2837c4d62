"""Completion webhooks: a JSON POST of the finished Upload, retried, never blocking or failing it."""
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from google.protobuf import json_format

from listseg.core.errors import InvalidArgument

log = logging.getLogger("listseg.server")


def check_url(url):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument("webhook_url must be an http(s) URL", field="webhook_url")


def post_body(upload):
    """{"upload": the listseg.v1.Upload message the call returns, in proto3 JSON}. The message, not the
    stored record, so nothing internal (such as the owner process) goes out; every field is present,
    so a receiver need not know that proto3 JSON leaves out zeros and empty strings."""
    fields = json_format.MessageToDict(upload, always_print_fields_with_no_presence=True)
    return json.dumps({"upload": fields}).encode()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None                       # a redirect is an answer, not a place to send the report


class Notifier:
    def __init__(self, attempts=3, timeout_s=5.0, backoff_s=0.5, workers=4):
        self.attempts, self.timeout_s, self.backoff_s = attempts, timeout_s, backoff_s
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="webhook")
        self.opener = urllib.request.build_opener(_NoRedirects)

    def notify(self, url, upload):
        """Queue a POST of an Upload message; returns a Future (tests wait on it, the server does not)."""
        return self.pool.submit(self._send, url, post_body(upload))

    def _send(self, url, body):
        for attempt in range(1, self.attempts + 1):
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with self.opener.open(req, timeout=self.timeout_s) as resp:
                    if 200 <= resp.status < 300:
                        return True
            except (urllib.error.URLError, OSError, ValueError) as exc:
                log.warning("webhook failed", extra={"fields": {"url": url, "attempt": attempt, "error": str(exc)}})
            time.sleep(self.backoff_s * attempt)
        return False

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
