"""Money: ISO currencies and their minor units, exact conversions, and JSON numbers from Decimal."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated

from pydantic import PlainSerializer

# Stripe's zero-decimal and three-decimal currencies; every other supported one has two decimals.
ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])
TWO_DECIMAL = frozenset(
    [
        "usd",
        "eur",
        "gbp",
        "aud",
        "cad",
        "chf",
        "cny",
        "czk",
        "dkk",
        "hkd",
        "huf",
        "idr",
        "ils",
        "inr",
        "mxn",
        "myr",
        "nok",
        "nzd",
        "php",
        "pln",
        "ron",
        "sek",
        "sgd",
        "thb",
        "try",
        "twd",
        "zar",
        "brl",
        "aed",
        "sar",
        "egp",
        "ngn",
        "kes",
        "mad",
        "cop",
        "pen",
        "ars",
        "uah",
        "bgn",
        "isk",
    ]
)
CURRENCIES = ZERO_DECIMAL | THREE_DECIMAL | TWO_DECIMAL


def exponent(currency: str) -> int:
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def to_minor(amount: Decimal, currency: str) -> int:
    """Major units to minor units; raises ValueError if the amount has more decimals than the currency."""
    scaled = amount.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{currency.upper()} amounts have at most {exponent(currency)} decimal places")
    return int(scaled)


# Stripe charges three-decimal currencies in whole multiples of 10 minor units (the last digit 0),
# for compatibility with its payment partners; every other currency in single minor units. Amounts
# someone enters (a plan's price, a custom invoice line) must already be such amounts, else 422:
# we never change a price silently. We compute no amount that Stripe charges (Stripe computes
# prorations, tax and invoice totals; commission splits stay in our ledger).
THREE_DECIMAL_STEP = 10


def charge_step(currency: str) -> int:
    """The smallest amount, in minor units, Stripe charges in this currency."""
    return THREE_DECIMAL_STEP if currency in THREE_DECIMAL else 1


def is_chargeable(amount: int, currency: str) -> bool:
    """Whether Stripe accepts `amount` (minor units) as a charge, price or invoice amount."""
    return amount % charge_step(currency) == 0


def chargeable_problem(amount: int, currency: str) -> str | None:
    """Why Stripe would refuse `amount` in `currency` (None when it accepts it), for a 422."""
    if is_chargeable(amount, currency):
        return None
    step = from_minor(charge_step(currency), currency)
    return (
        f"{currency.upper()} amounts must be whole multiples of {step} (Stripe charges the last digit as 0)"
    )


def from_minor(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-exponent(currency))


def minor_decimal(price: Decimal, currency: str) -> Decimal:
    """A per-unit price in minor units, for Stripe's `unit_amount_decimal` (at most 12 decimals)."""
    return price.scaleb(exponent(currency)).normalize()


def format_amount(amount: int, currency: str) -> str:
    """`1234, "usd"` -> `"12.34 USD"`; `1234, "jpy"` -> `"1,234 JPY"` style, for documents."""
    digits = exponent(currency)
    major = from_minor(amount, currency)
    return f"{major:,.{digits}f} {currency.upper()}"


def _json_number(value: Decimal) -> int | float:
    """The Decimal as a JSON number with exactly its digits (the contract wants numbers, not strings).

    Prices are bounded well inside 15 significant digits, so the shortest float repr is the same
    text; the check makes sure no value ever leaves rounded.
    """
    if value == value.to_integral_value():
        return int(value)
    number = float(value)
    if Decimal(repr(number)) != value:
        raise ValueError(f"{value} cannot be written exactly as a JSON number")
    return number


JsonDecimal = Annotated[Decimal, PlainSerializer(_json_number, return_type=int | float, when_used="json")]


def split_commission(gross: int, rate: Decimal) -> tuple[int, int]:
    """`(commission, net)` of a gross amount in minor units; `commission + net == gross` exactly.

    The commission is `gross * rate` rounded half up to the minor unit (half a cent goes to the
    platform) and the net is the rest, so a creator's net is `gross * (1 - rate)` rounded half down.
    Each ledger line is rounded on its own and the lines are then summed.
    """
    if gross < 0:
        raise ValueError("gross must not be negative")
    commission = int((Decimal(gross) * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return commission, gross - commission
