"""Structured logs: one JSON object per line on stderr (`listseg serve`, `listseg dashboard`)."""
import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record):
        out = {"time": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging():
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("listseg")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
