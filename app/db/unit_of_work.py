"""The unit of work: one transaction that commits, then runs its after-commit hooks itself.

Every job, command and the webhook processor writes through `unit_of_work(sessionmaker)`, and the
API's request session is one too (`app/db/session.py`), so no caller commits by hand or runs the
hooks itself. A hook registered with `after_commit` (enqueue a job, warm a cache) runs only once
the transaction has committed: an exception inside the block rolls back and drops the hooks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

AfterCommit = Callable[[], Awaitable[None]]
_HOOKS = "after_commit"


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` once the session's transaction has committed (e.g. enqueue a job)."""
    session.info.setdefault(_HOOKS, []).append(callback)


async def _run_hooks(session: AsyncSession) -> None:
    callbacks: list[AfterCommit] = session.info.pop(_HOOKS, [])
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            # The intent is already stored; a sweeper picks up what this could not hand over.
            log.exception("after-commit callback failed")


@asynccontextmanager
async def unit_of_work(
    sessionmaker: async_sessionmaker[AsyncSession], *, dry_run: bool = False
) -> AsyncIterator[AsyncSession]:
    """A session in one transaction: committed when the block ends, then its hooks run.

    An exception rolls the transaction back and its hooks never run. With `dry_run`, the block's
    work is rolled back even when it succeeds (and its hooks are dropped): `billing sync --dry-run`.
    """
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            session.info.pop(_HOOKS, None)
            await session.rollback()
            raise
        if dry_run:
            session.info.pop(_HOOKS, None)
            await session.rollback()
            return
        await session.commit()
        await _run_hooks(session)


async def release_connection(session: AsyncSession) -> None:
    """End a transaction that has only read, so that its pooled connection serves other requests
    while this one waits on a slow call outside the database (Stripe); the session's next
    statement begins a new transaction on a connection checked out then.

    Objects the session loaded are expired by it: read what is needed before. A session with
    pending writes or after-commit hooks is refused, as ending it would drop them."""
    if session.new or session.dirty or session.deleted or session.info.get(_HOOKS):
        raise RuntimeError("release_connection: the transaction holds work that is not committed")
    await session.rollback()
