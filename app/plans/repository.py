from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import and_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Api, PricingPlan, PricingPlanVersion

_CURRENT = and_(
    PricingPlanVersion.plan_id == PricingPlan.id, PricingPlanVersion.version == PricingPlan.current_version
)


class PlanRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def claim_api(self, api_id: str, creator_id: str) -> Api:
        """The API row, locked; created for `creator_id` if nobody has claimed it yet."""
        await self._session.execute(
            insert(Api).values(api_id=api_id, creator_id=creator_id).on_conflict_do_nothing()
        )
        return (
            await self._session.execute(select(Api).where(Api.api_id == api_id).with_for_update())
        ).scalar_one()

    async def get_api(self, api_id: str, *, for_update: bool = False) -> Api | None:
        statement = select(Api).where(Api.api_id == api_id)
        if for_update:
            statement = statement.with_for_update()
        return (await self._session.execute(statement)).scalar_one_or_none()

    async def list_current(
        self, api_id: str, *, include_inactive: bool
    ) -> Sequence[tuple[PricingPlan, PricingPlanVersion]]:
        statement = (
            select(PricingPlan, PricingPlanVersion)
            .join(PricingPlanVersion, _CURRENT)
            .where(PricingPlan.api_id == api_id)
            .order_by(PricingPlan.created_at, PricingPlan.id)
        )
        if not include_inactive:
            statement = statement.where(PricingPlan.is_active)
        return (await self._session.execute(statement)).all()

    async def get_current(
        self, plan_id: uuid.UUID, *, api_id: str | None = None, for_update: bool = False
    ) -> tuple[PricingPlan, PricingPlanVersion] | None:
        statement = select(PricingPlan, PricingPlanVersion).join(PricingPlanVersion, _CURRENT)
        statement = statement.where(PricingPlan.id == plan_id)
        if api_id is not None:
            statement = statement.where(PricingPlan.api_id == api_id)
        if for_update:
            statement = statement.with_for_update(of=PricingPlan)
        row = (await self._session.execute(statement)).one_or_none()
        return (row[0], row[1]) if row else None

    async def get_version(
        self, plan_id: uuid.UUID, version: int
    ) -> tuple[PricingPlan, PricingPlanVersion] | None:
        statement = (
            select(PricingPlan, PricingPlanVersion)
            .join(PricingPlanVersion, PricingPlanVersion.plan_id == PricingPlan.id)
            .where(PricingPlan.id == plan_id, PricingPlanVersion.version == version)
        )
        row = (await self._session.execute(statement)).one_or_none()
        return (row[0], row[1]) if row else None

    def add(self, *rows: object) -> None:
        self._session.add_all(rows)

    async def flush(self) -> None:
        await self._session.flush()
