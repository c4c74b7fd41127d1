"""The entitlement path's Redis connection packs commands in C, byte for byte as redis-py would."""

from __future__ import annotations

from redis.asyncio.connection import Connection

from app.db.packed_redis import PackedConnection


def test_the_packed_connection_sends_the_same_bytes_as_redis_py() -> None:
    ours, theirs = PackedConnection(), Connection()
    assert type(ours).pack_command is not Connection.pack_command  # hiredis is installed: packed in C
    commands: list[tuple[str | int | bytes, ...]] = [
        ("EVALSHA", "a" * 40, 2, "ent:{sub:1}:period:17", "ent:{sub:1}:minute:9", 1, 2_678_460, 120),
        ("GET", "ent:key:clé-ü"),
        ("SET", b"ent:{sub:2}:snapshot", b'{"v": 1}', "EX", 300),
        ("SCRIPT LOAD", "return 1"),
    ]
    for command in commands:
        assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    assert b"".join(ours.pack_commands(commands)) == b"".join(theirs.pack_commands(commands))
