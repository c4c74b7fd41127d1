"""Column types shared by the tables."""

from __future__ import annotations

from typing import Annotated, Any

from sqlalchemy import BigInteger, CheckConstraint, Numeric, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import mapped_column

# Amounts in the currency's minor unit; BIGINT so large invoices never overflow.
MinorUnits = Annotated[int, mapped_column(BigInteger)]
Currency = Annotated[str, mapped_column(String(3))]
StripeId = Annotated[str, mapped_column(String(255))]
Json = Annotated[dict[str, Any], mapped_column(JSONB)]
PER_CALL_PRICE = Numeric(18, 8)


def enum_check(column: str, values: tuple[str, ...], name: str | None = None) -> CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=name or f"{column}_valid")


def non_negative(*columns: str) -> list[CheckConstraint]:
    return [CheckConstraint(f"{c} >= 0", name=f"{c}_non_negative") for c in columns]
