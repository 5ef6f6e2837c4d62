"""Types of the compiled CSV scanner (`_parser.pyx`); `_parser_py.py` is its twin with the same API."""
from collections.abc import Sequence

from typing_extensions import Buffer

class Scanner:
    header_error: bool
    header_seen: bool
    def __init__(self, ncols: int, type_col: int, max_field: int, required: Sequence[bool],
                 names: Sequence[str | bytes]) -> None: ...
    def feed(self, data: Buffer) -> None: ...
    def finish(self) -> None: ...
    @property
    def pending_rows(self) -> int: ...
    @property
    def perm_tuple(self) -> tuple[int, ...]: ...
    def take(self) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """(fields, ends, kinds, error_lines, error_codes) of the rows since the last take()."""
