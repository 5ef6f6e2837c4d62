"""The web dashboard: the pages a marketer uses (segments, upload and replace, troubleshooting, details
with the trend chart, sample users, download), served over listseg's public gRPC API only.

    from listseg.dashboard.server import Dashboard
    Dashboard("127.0.0.1:50051", "127.0.0.1:8080").start()   # or: listseg serve --http 127.0.0.1:8080

`web.create_app` builds the Flask app; `server.Dashboard` serves it with waitress on a thread.
"""
