"""An upload's report: what it did, and the rows it rejected (troubleshooting)."""
import csv
import io

from flask import Blueprint, Response, g, jsonify

from listseg.dashboard.pages import page, problem, timestamp
from listseg.dashboard.views.profiles import segment_if_any
from listseg.v1 import listseg_pb2 as pb

bp = Blueprint("uploads", __name__)
ERRORS_SHOWN = 500                       # rejected rows on the troubleshoot page (all are in the download)
BUSY = (pb.UPLOAD_STATE_RECEIVING, pb.UPLOAD_STATE_PROCESSING)


@bp.get("/uploads/<int:upload_id>")
def upload_report(upload_id):
    up = g.client.get_upload(upload_id)
    seg = segment_if_any(up.segment) if up.segment else None
    errors, more = g.client.upload_errors_page(upload_id, ERRORS_SHOWN)
    return page("upload_report.jinja", up=up, seg=seg, errors=errors, more=bool(more), problem=problem(up),
                busy=up.state in BUSY, seg_updated=timestamp(seg.update_time) if seg else None,
                mode=pb.UploadMode.Name(up.mode).removeprefix("UPLOAD_MODE_").lower())


@bp.get("/uploads/<int:upload_id>/status")
def upload_status(upload_id):
    return jsonify(busy=g.client.get_upload(upload_id).state in BUSY)


@bp.get("/uploads/<int:upload_id>/rejected.csv")
def download_rejected(upload_id):
    g.client.get_upload(upload_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["line", "reason"])
    writer.writerows(g.client.upload_errors(upload_id, page_size=10_000))
    return Response(out.getvalue(), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="upload-{upload_id}-rejected-rows.csv"'})
