"""The entitlement path's Redis connection: commands packed by hiredis (C), not in Python.

redis-py's asyncio connection packs every argument in Python; on the check and track path that
packing costs more than Redis itself (a track batch is one pipelined script call per
subscription). hiredis, whose reply parser redis-py already uses, packs the same RESP bytes.
"""

from __future__ import annotations

from redis.asyncio.connection import Connection
from redis.connection import HiredisRespSerializer
from redis.typing import EncodableT
from redis.utils import HIREDIS_AVAILABLE

_PACKER = HiredisRespSerializer()


class _HiredisPackedConnection(Connection):
    def pack_command(self, *args: EncodableT) -> list[bytes]:
        packed: list[bytes] = _PACKER.pack(*args)  # type: ignore[arg-type]  # redis-py types each arg as a list
        return packed


# Without hiredis (a declared dependency, so only in an odd install) the Python packer still works.
PackedConnection: type[Connection] = _HiredisPackedConnection if HIREDIS_AVAILABLE else Connection
