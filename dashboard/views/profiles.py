"""A user's profile, opened from a segment's sample."""
import grpc
from flask import Blueprint, g, request

from listseg.clients.client import CallError
from listseg.dashboard.pages import page

bp = Blueprint("profiles", __name__)


@bp.get("/profile")
def profile():
    guid = request.args.get("guid", "")
    if not guid:
        return page("error.jinja", 400, title="Which user?", message="Open a user from a segment's sample.")
    prof = g.client.get_profile(guid=guid)
    back = request.args.get("segment", "")
    return page("profile.jinja", profile=prof, seg=segment_if_any(back) if back.isdigit() else None)


def segment_if_any(ref):
    """The segment, or None when it is gone."""
    try:
        return g.client.get_segment(ref)
    except CallError as exc:
        if exc.code != grpc.StatusCode.NOT_FOUND:
            raise
        return None
