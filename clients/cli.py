"""`listseg`: the command line. Data on stdout (JSON with --json), messages and progress on stderr.

Exit codes: 0 ok; 1 the operation failed, the server refused it, or the answer is negative; 2 usage.
`is-member` exits 0 for a member, 1 for not a member and 2 for any error.
"""
import argparse
import contextlib
import functools
import json
import os
import sys
import time

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


# -- output shapes (the CLI's JSON contract) ------------------------------------------------------
def upload_json(up):
    from listseg.v1 import listseg_pb2 as pb
    r = up.report
    return {"upload": up.id, "segment": up.segment, "segment_name": up.segment_name,
            "state": pb.UploadState.Name(up.state).removeprefix("UPLOAD_STATE_").lower(),
            "reason": up.reason, "dry_run": up.dry_run, "rows": r.rows, "qualified": r.qualified,
            "unknown": r.unknown, "invalid": r.invalid, "duplicates": r.duplicates, "size": r.size,
            "version": r.version, "errors": [{"line": e.line, "reason": e.reason} for e in r.errors]}


def profile_json(p):
    return {"guid": p.guid, "identity": p.identity or None, "channels": list(p.channels)}


def segment_json(seg, full=False):
    from listseg.v1 import listseg_pb2 as pb
    out = {"id": str(seg.id), "name": seg.name,
           "state": pb.SegmentState.Name(seg.state).removeprefix("SEGMENT_STATE_").lower(),
           "size": seg.size, "version": seg.version,
           "consumers": [{"kind": pb.ConsumerKind.Name(c.kind).removeprefix("CONSUMER_KIND_").lower(),
                          "id": c.id, "name": c.name} for c in seg.consumers],
           "created": seg.create_time.ToJsonString(), "updated": seg.update_time.ToJsonString()}
    if full:
        out["reachability"] = dict(sorted(seg.reachability.items()))
        out["trend"] = [{"time": t.time.ToJsonString(), "size": t.size} for t in seg.trend]
        out["sample"] = [profile_json(p) for p in seg.sample]
        out["last_upload"] = upload_json(seg.last_upload) if seg.HasField("last_upload") else None
    return out


# -- commands ----------------------------------------------------------------------------------------
def cmd_upload(args, client):
    from listseg.clients.client import CallError
    from listseg.server.uploads import RESUME_WINDOW_S
    targets = [(k, getattr(args, k)) for k in ("name", "replace", "append", "remove") if getattr(args, k)]
    if len(targets) != (args.resume is None):
        raise UsageError("upload needs exactly one of --name, --replace, --append, --remove" if args.resume is None
                         else "--resume takes the upload's id and the file only")
    size = os.path.getsize(args.file)
    bar = _progress(size, args.file)
    say = bar.write if bar else functools.partial(print, file=sys.stderr)

    streams = []

    def streaming(upload_id, offset):
        if bar:
            bar.set_description(f"upload {upload_id}")
        if streams or args.resume is not None:
            say(f"listseg: upload {upload_id}: resuming at byte {offset:,}")
        streams.append(offset)
    try:
        up = client.upload(args.file, dry_run=args.dry_run, strict=args.strict, webhook_url=args.webhook or "",
                           progress=bar.update if bar else None, notify_emails=_emails(args.notify),
                           resume=args.resume, on_stream=streaming, **dict(targets))
    except CallError as e:
        if "upload" in e.metadata and e.reason in ("", "UPLOAD_ELSEWHERE"):
            say(f"listseg: upload {e.metadata['upload']} may still be resumed (a server keeps it "
                f"{RESUME_WINDOW_S / 60:g} minutes by default): listseg upload --resume {e.metadata['upload']} {args.file}")
        raise
    finally:
        if bar:
            bar.close()
    out = upload_json(up)
    return out, (EXIT_OK if out["state"] == "succeeded" else EXIT_FAILED), _upload_text(out)


def _emails(text):
    return [a.strip() for a in (text or "").replace(";", ",").split(",") if a.strip()]


def _upload_text(o):
    head = f"upload {o['upload']} {o['state']}" + (f": {o['reason']}" if o["reason"] else "")
    lines = [head, f"segment {o['segment_name']} ({o['segment'] or 'dry run'}): {o['size']} members",
             f"rows {o['rows']}: qualified {o['qualified']}, unknown {o['unknown']}, "
             f"invalid {o['invalid']}, duplicates {o['duplicates']}"]
    lines += [f"  line {e['line']}: {e['reason']}" for e in o["errors"][:10]]
    return "\n".join(lines)


def cmd_profiles_import(args, client):
    r = client.import_profiles(args.file)
    out = {"rows": r.rows, "upserted": r.upserted, "invalid": r.invalid,
           "errors": [{"line": e.line, "reason": e.reason} for e in r.errors]}
    return out, EXIT_OK, f"rows {r.rows}: upserted {r.upserted}, invalid {r.invalid}"


def cmd_segments(args, client):
    out = [segment_json(s) for s in client.list_segments()]
    text = "\n".join(f"{s['id']:>6}  {s['name']:<30} {s['state']:<10} {s['size']:>12}  "
                     f"{len(s['consumers'])} consumers" for s in out) or "no segments"
    return out, EXIT_OK, text


def cmd_show(args, client):
    out = segment_json(client.get_segment(args.segment, sample=args.sample), full=True)
    text = "\n".join([f"{out['name']} (id {out['id']}, {out['state']}, version {out['version']}): "
                      f"{out['size']} members",
                      "reachability: " + ", ".join(f"{k} {v}" for k, v in out["reachability"].items()),
                      "consumers: " + (", ".join(f"{c['kind']} {c['id']}" for c in out["consumers"]) or "none"),
                      "trend: " + ", ".join(f"{t['time']} {t['size']}" for t in out["trend"][-10:]),
                      "sample: " + ", ".join(p["guid"] for p in out["sample"])])
    return out, EXIT_OK, text


def cmd_is_member(args, client):
    if (args.guid is None) == (args.identity is None):
        raise UsageError("is-member needs exactly one of --guid, --identity")
    member = client.is_member(args.segment, guid=args.guid, identity=args.identity)
    return member, (EXIT_OK if member else EXIT_FAILED), "true" if member else "false"


def cmd_members(args, client):
    if args.output and args.output != "-":
        with open(args.output, "wb") as f:
            client.export(args.segment, f)
        return {"output": args.output}, EXIT_OK, None
    client.export(args.segment, sys.stdout.buffer)
    sys.stdout.flush()
    return None, EXIT_OK, None


def cmd_changes(args, client):
    """Type,Identity,Change rows (Change: added or removed) of the members that joined or left."""
    if args.from_version < 0 or (args.to or 0) < 0:
        raise UsageError("--from and --to are version numbers (0 or more)")
    if args.output and args.output != "-":
        part = args.output + ".part"            # a broken listing leaves no file that looks whole
        try:
            with open(part, "w", newline="") as f:
                out = _write_changes(client.member_changes(args.segment, args.from_version, args.to or 0), f)
            os.replace(part, args.output)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(part)
        out["output"] = args.output
        return out, EXIT_OK, (f"versions {out['from_version']} -> {out['to_version']}: {out['added']:,} added, "
                              f"{out['removed']:,} removed, written to {args.output}")
    _write_changes(client.member_changes(args.segment, args.from_version, args.to or 0), sys.stdout)
    sys.stdout.flush()
    return None, EXIT_OK, None


def _write_changes(pages, f):
    import csv
    rows = csv.writer(f, lineterminator="\n")
    rows.writerow(["Type", "Identity", "Change"])
    out = {"from_version": 0, "to_version": 0, "added": 0, "removed": 0}
    for page in pages:
        guids = page.guids.decode().split("\n")
        rows.writerows(("g", guid, "added" if joined else "removed") for guid, joined in zip(guids, page.added))
        out.update(from_version=page.from_version, to_version=page.to_version, added=page.added_total,
                   removed=page.removed_total)
    return out


def _consumer(args):
    if bool(args.campaign) == bool(args.journey):
        raise UsageError("give exactly one of --campaign ID, --journey ID")
    return ("campaign", args.campaign) if args.campaign else ("journey", args.journey)


def cmd_attach(args, client):
    kind, cid = _consumer(args)
    out = segment_json(client.attach(args.segment, kind, cid, args.consumer_name or ""))
    return out, EXIT_OK, f"{kind} {cid} attached to {out['name']}"


def cmd_detach(args, client):
    kind, cid = _consumer(args)
    out = segment_json(client.detach(args.segment, kind, cid))
    return out, EXIT_OK, f"{kind} {cid} detached from {out['name']}"


def version_json(v):
    return {"version": v.version, "time": v.create_time.ToDatetime().isoformat() + "Z", "size": v.size,
            "head": v.head, "kept": v.kept, "rollback_of": v.rollback_of or None,
            "upload": upload_json(v.upload) | {"mode": mode_name(v.upload.mode), "file_name": v.upload.file_name}
            if v.HasField("upload") else None}


def mode_name(mode):
    from listseg.v1 import listseg_pb2 as pb
    return pb.UploadMode.Name(mode).removeprefix("UPLOAD_MODE_").lower()


def cmd_versions(args, client):
    out = [version_json(v) for v in client.versions(args.segment)]

    def made_by(v):
        if v["rollback_of"]:
            return f"rollback to {v['rollback_of']}"
        up = v["upload"]
        return f"{up['mode']} {up['file_name'] or '(no file name)'}: {up['qualified']:,} qualified" if up else ""
    row = "{} {:>7}  {:<19}  {:>12}  {:<4}  {}".format
    lines = [row("*" if v["head"] else " ", v["version"], v["time"][:19], f"{v['size']:,}",
                 "kept" if v["kept"] else "gone", made_by(v)) for v in out]
    return out, EXIT_OK, "\n".join([row(" ", "version", "time (UTC)", "members", "kept", "made by"), *lines])


def cmd_rollback(args, client):
    out = segment_json(client.rollback(args.segment, args.to))
    return out, EXIT_OK, f"{out['name']}: version {out['version']} = rollback to {args.to} ({out['size']:,} members)"


def cmd_delete(args, client):
    client.delete_segment(args.segment)
    return {"deleted": args.segment}, EXIT_OK, f"deleted {args.segment}"


def cmd_upload_errors(args, client):
    rows = client.upload_errors(args.upload)
    return ([{"line": line, "reason": reason} for line, reason in rows], EXIT_OK,
            "\n".join(f"line {line}: {reason}" for line, reason in rows) or "no rejected rows")


STORE_HELP = ("keep the data in Redis instead of --data: redis-cluster://HOST:PORT,HOST:PORT,... (seed nodes) "
              "or redis://HOST:PORT (one node); rediss:// and redis-clusters:// for TLS, redis://:PASSWORD@...")


def _check_store(args):
    from listseg.core.backend import is_redis
    from listseg.core.errors import ListsegError
    try:
        if args.store and not is_redis(args.store):
            raise UsageError(f"--store takes a Redis URL, not {args.store!r}; a directory is --data")
    except ListsegError as e:
        raise UsageError(str(e)) from None


def cmd_serve(args, _client):
    from listseg.server.app import serve
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.keep_versions < 1:
        raise UsageError("--keep-versions is at least 1: the head is always kept")
    _check_store(args)
    try:
        return None, serve(args.store or args.data, args.listen, args.workers, args.grace, tls, http=args.http,
                           mail=_mail_settings(args), http_tls_ca=args.tls_ca, max_uploads=args.max_uploads,
                           max_upload_bytes=args.max_upload_bytes, profile_index=not args.no_profile_index,
                           profile_index_max=args.profile_index_max,
                           keep_versions=args.keep_versions, resume_window=args.resume_window,
                           membership_listen=args.membership_listen, metrics_listen=args.metrics), None
    except (PermissionError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None


def _mail_settings(args):
    """server.mail.Mailer's settings from the --smtp options; None without --smtp."""
    if not args.smtp:
        if args.smtp_user or args.smtp_starttls:
            raise UsageError("--smtp-user and --smtp-starttls need --smtp HOST:PORT")
        return None
    from listseg.server.addresses import local_host, split_address
    try:
        host, port = split_address(args.smtp, "--smtp")
        url = args.dashboard_url or (f"http://{local_host(args.http)}:{split_address(args.http)[1]}"
                                     if args.http else "")
    except ValueError as e:
        raise UsageError(str(e)) from None
    return {"host": host.strip("[]"), "port": port, "user": args.smtp_user,
            "password": args.smtp_password or os.environ.get("LISTSEG_SMTP_PASSWORD"),
            "starttls": args.smtp_starttls, "sender": args.smtp_from, "dashboard_url": url}


def cmd_dashboard(args, _client):
    from listseg.dashboard.server import run
    try:
        return None, run(args.server, args.http, tls_ca=args.tls_ca), None
    except (PermissionError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None


def cmd_accounts_create(args, _client):
    from listseg.core.accounts import Credentials
    from listseg.core.engine import Engine
    from listseg.core.errors import ListsegError
    _check_store(args)
    with Engine(args.store or args.data) as engine:
        try:
            account_id, passcode = Credentials(engine).create(args.account_name)
        except ListsegError as e:           # the engine's refusal (an empty name), not a traceback
            raise UsageError(f"{e} ({e.reason})") from None
    return ({"account": account_id, "passcode": passcode, "name": args.account_name}, EXIT_OK,
            f"account {account_id}\npasscode {passcode}\n(the passcode is shown once; it is stored hashed)")


def cmd_backup(args, _client):
    """A compacted copy of the LMDB store at --data into the empty directory DEST, while a server
    may be serving it (LMDB's copy from one read transaction: every segment at one committed version)."""
    import threading
    from listseg.core.backend import open_backend
    from listseg.core.errors import ListsegError
    source = os.path.join(args.data, "data.mdb")
    if not os.path.isfile(source):
        raise UsageError(f"{args.data} holds no store (no data.mdb)")
    if os.path.exists(args.dest) and (not os.path.isdir(args.dest) or os.listdir(args.dest)):
        raise UsageError(f"{args.dest} must be an empty directory or not exist")
    made = not os.path.exists(args.dest)
    os.makedirs(args.dest, exist_ok=True)
    copy, failed, started = os.path.join(args.dest, "data.mdb"), [], time.monotonic()
    backend = open_backend(args.data)
    try:
        def run():
            try:
                backend.backup(args.dest)
            except (ListsegError, OSError) as e:
                failed.append(e)
        worker = threading.Thread(target=run, name="backup")
        worker.start()
        bar = _progress(os.path.getsize(source), args.dest)       # the source's size: an upper bound
        while worker.is_alive():
            worker.join(0.2)
            if bar is not None and os.path.exists(copy):
                bar.update(os.path.getsize(copy) - bar.n)
        if bar is not None:
            bar.close()
    finally:
        backend.close()
    if failed:
        with contextlib.suppress(OSError):
            os.remove(copy)
            if made:
                os.rmdir(args.dest)
        raise OSError(f"the backup failed, and its partial copy is removed: {failed[0]}")
    size, seconds = os.path.getsize(copy), time.monotonic() - started
    return ({"path": args.dest, "bytes": size, "seconds": round(seconds, 3)}, EXIT_OK,
            f"backed up {args.data} to {args.dest}: {size:,} bytes in {seconds:.1f} s")


def cmd_restore(args, _client):
    """The backup in SRC as the store at --data, refused while a server has it open."""
    from listseg.core.backend import restore_backup
    restore_backup(args.src, args.data, overwrite=args.force)
    return ({"path": args.data, "from": args.src}, EXIT_OK, f"restored {args.src} to {args.data}")


# -- parsing ---------------------------------------------------------------------------------------
def _common(parser, suppress):
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    parser.add_argument("--server", default=d(os.environ.get("LISTSEG_SERVER", "127.0.0.1:50051")),
                        help="HOST:PORT of the listseg server (env LISTSEG_SERVER)")
    parser.add_argument("--account", default=d(os.environ.get("LISTSEG_ACCOUNT")), help="env LISTSEG_ACCOUNT")
    parser.add_argument("--passcode", default=d(os.environ.get("LISTSEG_PASSCODE")), help="env LISTSEG_PASSCODE")
    parser.add_argument("--tls-ca", default=d(None), help="CA certificate to trust (PEM) for a TLS server")
    parser.add_argument("--json", action="store_true", default=d(False), help="machine output on stdout")


def _data_option(parser):
    parser.add_argument("--data", default="./data", help="LMDB directory (default ./data)")


def build_parser():
    from listseg.core.backend import Retention
    from listseg.core.keyindex import MAX_PROFILES
    from listseg.server.uploads import RESUME_WINDOW_S
    ap = argparse.ArgumentParser(prog="listseg", description="Custom list segments: upload, query, serve.")
    _common(ap, suppress=False)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p, suppress=True)
        p.set_defaults(fn=fn)
        return p

    p = command("upload", cmd_upload, "upload a Type,Identity CSV as a new segment or into one")
    p.add_argument("file")
    p.add_argument("--name", help="create a segment with this name")
    p.add_argument("--replace", metavar="SEG", help="replace the members of SEG (id or name)")
    p.add_argument("--append", metavar="SEG", help="add the file's members to SEG")
    p.add_argument("--remove", metavar="SEG", help="remove the file's members from SEG")
    p.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    p.add_argument("--strict", action="store_true", help="fail on any invalid row")
    p.add_argument("--webhook", metavar="URL", help="POST the result (JSON) here when processing ends")
    p.add_argument("--notify", metavar="EMAILS", help="email the result to these addresses (comma-separated)")
    p.add_argument("--resume", type=int, metavar="UPLOAD_ID",
                   help="continue an upload whose stream broke, from the byte the server holds (same FILE; "
                        "no --name or segment)")

    profiles = sub.add_parser("profiles", help="user profiles").add_subparsers(dest="sub", required=True)
    p = profiles.add_parser("import", help="upsert profiles from a guid,identity,channels CSV")
    _common(p, suppress=True)
    p.set_defaults(fn=cmd_profiles_import)
    p.add_argument("file")

    command("segments", cmd_segments, "list segments")
    p = command("show", cmd_show, "a segment's details")
    p.add_argument("segment", metavar="SEG")
    p.add_argument("--sample", type=int, default=10, help="sample users to show (0-100)")
    p = command("is-member", cmd_is_member, "is a user in a segment? exit 0 yes, 1 no, 2 error")
    p.add_argument("segment", metavar="SEG")
    p.add_argument("--guid")
    p.add_argument("--identity")
    p = command("members", cmd_members, "download every member as a re-uploadable CSV")
    p.add_argument("segment", metavar="SEG")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p = command("changes", cmd_changes, "the members that joined or left a segment between two versions, as "
                "Type,Identity,Change CSV")
    p.add_argument("segment", metavar="SEG")
    p.add_argument("--from", dest="from_version", type=int, required=True, metavar="N",
                   help="the version before (0: everyone in --to is added)")
    p.add_argument("--to", type=int, metavar="M", help="the version after (default: the head)")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    for name, fn in (("attach", cmd_attach), ("detach", cmd_detach)):
        p = command(name, fn, f"{name} a campaign or journey {'to' if name == 'attach' else 'from'} a segment")
        p.add_argument("segment", metavar="SEG")
        p.add_argument("--campaign", metavar="ID")
        p.add_argument("--journey", metavar="ID")
        if name == "attach":
            p.add_argument("--consumer-name", help="a label for the campaign or journey")
    p = command("versions", cmd_versions, "a segment's versions, newest first, and what made each")
    p.add_argument("segment", metavar="SEG")
    p = command("rollback", cmd_rollback, "make a kept version the segment's head again (as a new version)")
    p.add_argument("segment", metavar="SEG")
    p.add_argument("--to", type=int, required=True, metavar="N", help="the version to copy")
    p = command("delete", cmd_delete, "delete a segment")
    p.add_argument("segment", metavar="SEG")
    p = command("upload-errors", cmd_upload_errors, "every rejected row of an upload")
    p.add_argument("upload", type=int, metavar="UPLOAD_ID")

    p = command("serve", cmd_serve, "run the server")
    _data_option(p)
    p.add_argument("--store", metavar="URL", help=STORE_HELP)
    p.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (default 127.0.0.1:50051)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port (default 1)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds to drain on SIGTERM (default 30)")
    p.add_argument("--tls-cert", help="serve TLS with this certificate (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    p.add_argument("--max-uploads", type=int, default=4, help="uploads running at once per account (default 4)")
    p.add_argument("--max-upload-bytes", type=int, default=5 << 30, help="largest upload (default 5 GiB)")
    p.add_argument("--resume-window", type=float, default=RESUME_WINDOW_S, metavar="SECONDS",
                   help=f"how long an upload whose stream broke waits for a resume (default {RESUME_WINDOW_S:g}; "
                        f"0: it fails at once)")
    p.add_argument("--keep-versions", type=int, default=Retention.versions, metavar="N",
                   help=f"versions of each segment kept for rollback however old, the head among them "
                        f"(default {Retention.versions}); older ones go an hour after they were replaced")
    p.add_argument("--no-profile-index", action="store_true",
                   help="no in-memory guid and identity index (saves ~95 bytes a profile; slower look-ups)")
    p.add_argument("--profile-index-max", type=int, default=MAX_PROFILES, metavar="N",
                   help=f"no in-memory index for an account past N profiles: its look-ups read the store "
                        f"(default {MAX_PROFILES:,}, ~1.9 GB of index)")
    p.add_argument("--membership-listen", metavar="HOST:PORT",
                   help="also serve the Membership service from the native front here (IsMember in native "
                        "code, from the LMDB files or the Redis store; see README, \"The membership front\")")
    p.add_argument("--http", metavar="HOST:PORT", help="also serve the web dashboard here (e.g. 127.0.0.1:8080)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="also serve Prometheus metrics here, at /metrics (README, \"Metrics\")")
    p.add_argument("--smtp", metavar="HOST:PORT", help="send completion emails through this SMTP server")
    p.add_argument("--smtp-user", help="SMTP login user")
    p.add_argument("--smtp-password", help="SMTP login password (better: env LISTSEG_SMTP_PASSWORD)")
    p.add_argument("--smtp-starttls", action="store_true", help="upgrade the SMTP connection with STARTTLS")
    p.add_argument("--smtp-from", metavar="ADDRESS", help="the emails' sender (default listseg@localhost)")
    p.add_argument("--dashboard-url", metavar="URL",
                   help="the dashboard's address for links in emails (default: http:// + --http)")

    p = command("dashboard", cmd_dashboard, "serve the web dashboard for a listseg server (--server)")
    p.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where to serve it (default 127.0.0.1:8080)")

    p = command("backup", cmd_backup, "copy a (running) server's LMDB store, compacted, into DEST")
    p.add_argument("dest", metavar="DEST", help="an empty or new directory")
    _data_option(p)
    p = command("restore", cmd_restore, "put a backup in place as the LMDB store at --data (not while served)")
    p.add_argument("src", metavar="SRC", help="a directory `listseg backup` made")
    _data_option(p)
    p.add_argument("--force", action="store_true", help="replace the store there (never one a server has open)")

    accounts = sub.add_parser("accounts", help="accounts and passcodes").add_subparsers(dest="sub", required=True)
    p = accounts.add_parser("create", help="create an account; prints its id and passcode")
    _common(p, suppress=True)
    p.set_defaults(fn=cmd_accounts_create)
    p.add_argument("account_name", metavar="NAME")
    _data_option(p)
    p.add_argument("--store", metavar="URL", help=STORE_HELP)
    return ap


def main(argv=None):
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return e.code
    from listseg.clients.client import CallError, Client
    client = None
    try:
        if args.fn not in (cmd_serve, cmd_accounts_create, cmd_dashboard, cmd_backup, cmd_restore):
            client = Client(args.server, args.account, args.passcode, tls_ca=args.tls_ca)
        out, code, text = args.fn(args, client)
    except UsageError as e:
        print(f"listseg: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CallError as e:
        print(f"listseg: {e} ({e.reason or e.code.name})", file=sys.stderr)
        return EXIT_USAGE if args.fn is cmd_is_member else EXIT_FAILED
    except (OSError, ValueError) as e:
        print(f"listseg: {e}", file=sys.stderr)
        return EXIT_USAGE if args.fn is cmd_is_member else EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    finally:
        if client:
            client.close()
    if args.json and out is not None:
        print(json.dumps(out, indent=None if not sys.stdout.isatty() else 2))
    elif text:
        print(text)
    return code


def _progress(total, name):
    """A tqdm bar on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(name), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

