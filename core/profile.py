"""What a profile is, and the rules for its fields: a guid and an identity are stripped of spaces and
tabs, at most parser.MAX_FIELD bytes, and hold no line break; channels are names of layout.CHANNELS.
"""
from dataclasses import dataclass

from listseg.core import parser
from listseg.core.errors import InvalidProfile
from listseg.core.layout import CHANNEL_BIT, CHANNELS, channel_names


@dataclass(frozen=True)
class Profile:
    uid: int
    guid: str
    identity: str | None
    channels: tuple

    def to_dict(self):
        return {"uid": self.uid, "guid": self.guid, "identity": self.identity,
                "channels": list(self.channels)}


def channel_bits(names):
    bits = 0
    for name in names:
        name = name.strip().lower()
        if not name:
            continue
        if name not in CHANNEL_BIT:
            raise InvalidProfile(f"unknown channel {name!r}; expected one of {', '.join(CHANNELS)}")
        bits |= CHANNEL_BIT[name]
    return bits


def from_record(uid, rec):
    bits, guid, identity = rec
    return Profile(uid, guid.decode(), identity.decode() or None, channel_names(bits))


def bits_byte(value):
    """The channels value of a row packed by Profiles.upsert: the bits byte itself."""
    return value[0]


def stored_key(value, what):
    """value (str or bytes) as a stored guid or identity; InvalidProfile when no profile can have it."""
    value = value.strip(" \t") if isinstance(value, str) else value.strip(b" \t")
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) > parser.MAX_FIELD:
        raise InvalidProfile(f"{what} longer than {parser.MAX_FIELD} bytes")
    if b"\n" in raw or b"\r" in raw:
        raise InvalidProfile(f"line break in {what}")
    return raw
