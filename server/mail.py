"""Completion emails: one email per upload, to the addresses in its spec, when processing ends.

Sent through SMTP on a small thread pool, never on the request thread: a slow, dead or refusing mail
server is logged and retried, and never fails or delays the upload (like webhook.py for webhooks).

    mailer = Mailer("smtp.example.com", 587, user="u", password="p", starttls=True,
                    sender="listseg@example.com", dashboard_url="http://127.0.0.1:8080")
    mailer.notify(["ana@example.com"], upload)      # upload: the engine's upload record (a dict)
"""
import logging
import re
import smtplib
import socket
import ssl
import time
from concurrent.futures import Future, ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from listseg.core.errors import InvalidArgument

log = logging.getLogger("listseg.server")

MAX_RECIPIENTS = 20
MAX_ADDRESS = 254
ROWS_IN_EMAIL = 10              # rejected rows listed in an email (the dashboard has them all)
# local@domain: no spaces, commas, angle brackets, quotes or control characters (so no header injection).
_ADDRESS = re.compile(r"[^\s@,;<>()\[\]\\\"]+@[^\s@,;<>()\[\]\\\"]+\.[^\s@,;<>()\[\]\\\".]+")


def check_addresses(addresses):
    """The addresses, trimmed and without repeats; INVALID_ARGUMENT if one is not an address."""
    out = []
    for address in addresses:
        address = address.strip()
        if len(address) > MAX_ADDRESS or not _ADDRESS.fullmatch(address):
            raise InvalidArgument(f"not an email address: {address[:80]!r}", field="notify_emails")
        if address.lower() not in (a.lower() for a in out):
            out.append(address)
    if len(out) > MAX_RECIPIENTS:
        raise InvalidArgument(f"at most {MAX_RECIPIENTS} email addresses", field="notify_emails")
    return out


class Mailer:
    """Sends completion emails. With no `host` it sends nothing and says so in the log."""

    def __init__(self, host=None, port=25, user=None, password=None, starttls=False, sender=None,
                 dashboard_url="", ssl_context=None, attempts=3, timeout_s=10.0, backoff_s=1.0, workers=2):
        self.host, self.port = host, int(port)
        self.user, self.password, self.starttls = user, password, starttls
        self.sender = sender or "listseg@localhost"
        self.dashboard_url = (dashboard_url or "").rstrip("/")
        self.ssl_context = ssl_context
        self.attempts, self.timeout_s, self.backoff_s = attempts, timeout_s, backoff_s
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="mail")

    def notify(self, recipients, upload):
        """Queue the email for a finished upload; returns a Future of True (sent) or False. Never raises."""
        if not recipients:
            return _done(False)
        if not self.host:
            log.warning("email not sent: no SMTP server configured (listseg serve --smtp HOST:PORT)",
                        extra={"fields": {"upload": upload.get("id"), "recipients": len(recipients)}})
            return _done(False)
        try:
            msg = compose(upload, self.sender, recipients, self.dashboard_url)
        except Exception:                       # noqa: BLE001 - an email must never fail an upload
            log.exception("email not composed", extra={"fields": {"upload": upload.get("id")}})
            return _done(False)
        try:
            return self.pool.submit(self._send, msg, list(recipients), upload.get("id"))
        except RuntimeError:                    # shutting down
            return _done(False)

    def _send(self, msg, recipients, upload_id):
        for attempt in range(1, self.attempts + 1):
            try:
                self._deliver(msg, recipients)
                log.info("email sent", extra={"fields": {"upload": upload_id, "recipients": len(recipients)}})
                return True
            except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
                permanent = isinstance(exc, (smtplib.SMTPAuthenticationError, smtplib.SMTPRecipientsRefused,
                                             smtplib.SMTPNotSupportedError)) or (
                    isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 500)
                log.warning("email failed", extra={"fields": {
                    "upload": upload_id, "smtp": f"{self.host}:{self.port}", "attempt": attempt,
                    "error": f"{type(exc).__name__}: {exc}"}})
                if permanent:
                    break
            if attempt < self.attempts:
                time.sleep(self.backoff_s * attempt)
        return False

    def _deliver(self, msg, recipients):
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s,
                          local_hostname=socket.gethostname() or "localhost") as smtp:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=self.ssl_context or ssl.create_default_context())
                smtp.ehlo()
            if self.user:
                smtp.login(self.user, self.password or "")
            smtp.send_message(msg, from_addr=self.sender, to_addrs=recipients)

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def _done(value):
    f = Future()
    f.set_result(value)
    return f


# -- the message --------------------------------------------------------------------------------
def compose(upload, sender, recipients, dashboard_url=""):
    """The email for a finished upload record (the engine's dict): subject and plain-text body."""
    msg = EmailMessage()
    subject, body = _content(upload, dashboard_url)
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid("listseg-upload-%s" % upload.get("id"),
                                   domain=sender.rpartition("@")[2] or "localhost")
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body)
    return msg


def _clean(text, limit=200):
    """No control characters (a subject line must stay one line) and a sane length."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", str(text))[:limit]


def _content(up, dashboard_url):
    report = up.get("report") or {}
    name = _clean(up.get("segment_name") or "(unnamed)")
    file_name = _clean(up.get("file_name") or "your file")
    create = up.get("mode") == "create"
    dry = up.get("dry_run")
    size = report.get("size", 0)
    lines = []
    if up.get("state") == "succeeded":
        if dry:
            subject = f"Dry run of {file_name}: segment {name} would have {size:,} users"
            lines.append(f"{file_name} was checked (dry run). Nothing was changed.")
        else:
            subject = (f"Segment {name} is ready: {size:,} users" if create
                       else f"Segment {name} was updated: {size:,} users")
            lines.append(f"{file_name} has been processed. The segment is ready for use.")
        lines += ["", f"Segment:  {name}", f"Size:     {size:,} users"
                  + (f" (version {report['version']})" if report.get("version") else "")]
    else:
        reason = _clean(up.get("reason") or "unknown", 1000)
        if create:
            subject = f"File upload failed: {name}"
            lines += [f"The segment {name} could not be created from {file_name}.", "",
                      f"Reason: {reason}", "", "Fix the errors and upload the file again."]
        else:
            subject = f"File re-upload failed: {name}"
            lines += [f"The segment {name} could not be refreshed with {file_name}.", "",
                      f"Reason: {reason}", "",
                      f"The segment stays available with its last successful update: {size:,} users.",
                      "Fix the errors and upload the file again."]
    lines += ["", f"Rows in the file: {report.get('rows', 0):,}",
              f"  qualified   {report.get('qualified', 0):,}",
              f"  unknown     {report.get('unknown', 0):,}",
              f"  invalid     {report.get('invalid', 0):,}",
              f"  duplicates  {report.get('duplicates', 0):,}"]
    errors = report.get("errors") or []
    if errors:
        shown = errors[:ROWS_IN_EMAIL]
        lines += ["", f"Rejected rows (the first {len(shown)} of {report.get('invalid', len(errors)):,}):"]
        lines += [f"  line {e['line']}: {e['reason']}" for e in shown]
    if dashboard_url:
        if up.get("state") == "succeeded" and up.get("segment") is not None and not dry:
            lines += ["", f"Segment details: {dashboard_url}/segments/{up['segment']}"]
        if up.get("state") != "succeeded" or errors:
            lines += ["", f"Troubleshoot this upload: {dashboard_url}/uploads/{up.get('id')}"]
    lines += ["", "--", f"listseg, upload {up.get('id')}"]
    return subject, "\n".join(lines) + "\n"
