"""Errors the engine raises. Each has a stable `reason` (an ErrorInfo reason over the wire); the
server maps the class to a gRPC status. The core itself knows nothing of gRPC."""


class ListsegError(Exception):
    reason = "INTERNAL"

    def __init__(self, message, **metadata):
        super().__init__(message)
        self.metadata = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(ListsegError):
    reason = "INVALID_ARGUMENT"


class NotFound(ListsegError):
    reason = "NOT_FOUND"


class AlreadyExists(ListsegError):
    reason = "ALREADY_EXISTS"


class InUse(ListsegError):
    """The segment has consumers (campaigns or journeys) attached: it cannot change until they stop."""
    reason = "SEGMENT_IN_USE"

    def __init__(self, segment_name, consumers):
        names = ", ".join(f"{c['kind']} {c['id']}" for c in consumers)
        super().__init__(f"segment {segment_name!r} is used by {names}; stop them first",
                         segment=segment_name, consumers=names)
        self.consumers = consumers


class VersionGone(ListsegError):
    """A pinned version (e.g. from a page token) has passed its retention window."""
    reason = "VERSION_EXPIRED"


class TooLarge(ListsegError):
    reason = "UPLOAD_TOO_LARGE"


class RequestTooLarge(ListsegError):
    """A request message over the server's limit (server/decoding.py MAX_REQUEST)."""
    reason = "REQUEST_TOO_LARGE"


class TooManyUploads(ListsegError):
    """The account already has as many uploads running as the server allows."""
    reason = "TOO_MANY_UPLOADS"


class Unauthenticated(ListsegError):
    """Missing or wrong credentials. Deliberately says nothing of which part was wrong."""
    reason = "UNAUTHENTICATED"

    def __init__(self):
        super().__init__("missing or invalid credentials (x-account-id, x-passcode)")
