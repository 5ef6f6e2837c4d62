"""Generated gRPC stubs (make generates them from proto/listseg/v1/), and the facts of the wire
contract a .proto cannot hold, for the server and the clients alike."""

# UploadList's initial metadata: the upload's id, sent as soon as the upload exists, so that a client
# whose stream breaks knows which upload to resume (UploadResume).
UPLOAD_ID_HEADER = "listseg-upload-id"
