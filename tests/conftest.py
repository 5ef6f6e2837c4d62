import os

import pytest

from listseg.core import _parser_py, _store_py, parser, store
from listseg.core.engine import Engine

TWIN_ONLY = bool(os.environ.get("LISTSEG_NO_EXTENSIONS"))


def _scanners():
    out = [pytest.param(_parser_py.Scanner, id="twin")]
    if not TWIN_ONLY:
        from listseg.core._parser import Scanner
        out.insert(0, pytest.param(Scanner, id="compiled"))
    return out


def _stores():
    out = [pytest.param(_store_py.Store, id="twin")]
    if not TWIN_ONLY:
        from listseg.core._store import Store
        out.insert(0, pytest.param(Store, id="compiled"))
    return out


@pytest.fixture(params=_scanners())
def scanner(request):
    return request.param


@pytest.fixture(params=_stores())
def store_cls(request):
    return request.param


@pytest.fixture
def engine(tmp_path, store_cls):
    with Engine(str(tmp_path / "data"), map_size=1 << 30, store_cls=store_cls) as e:
        yield e


@pytest.fixture
def account(engine):
    return engine.account()


def people(n, start=0):
    """n profiles: guid g<k>, identity id<k> for odd k, channels by k."""
    chans = [["email"], ["sms", "push"], [], ["email", "whatsapp", "webpush"]]
    return [(f"g{k}", f"id{k}" if k % 2 else None, chans[k % 4]) for k in range(start, start + n)]


def upload(account, data, mode="create", chunk=None, **kw):
    up = account.upload(mode, **kw)
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        up.feed(data[i:i + step])
    return up.finish()
