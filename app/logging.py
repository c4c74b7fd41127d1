"""JSON-lines logging with the request id of the current request, secrets and card numbers redacted."""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

REDACTED = "[redacted]"
# Extra fields whose value is always a secret, whatever it looks like.
_SECRET_KEY = re.compile(
    r"authorization|cookie|password|passwd|secret|token|api[_-]?key|signature|card[_-]?number|cvc|cvv",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]+"  # Stripe API keys
    r"|\bwhsec_[A-Za-z0-9]+"  # webhook signing secrets
    r"|\bBearer\s+[A-Za-z0-9\-._~+/]+=*"  # bearer tokens (JWTs)
    r"|\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",  # bare JWTs
    re.IGNORECASE,
)
# 13 to 19 digits, optionally grouped by spaces or dashes; redacted when the Luhn check passes.
_CARD_CANDIDATE = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _redact_card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return REDACTED if _luhn_ok(digits) else match.group(0)


def redact_text(text: str) -> str:
    """Remove API keys, webhook secrets, bearer tokens and card numbers from a string."""
    return _CARD_CANDIDATE.sub(_redact_card, _SECRET_VALUE.sub(REDACTED, text))


def redact(value: object, key: str = "") -> object:
    """Redact a log field: secret-named keys entirely, secret-looking parts of strings, recursively."""
    if key and _SECRET_KEY.search(key) and value is not None:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


class RedactSecretsFilter(logging.Filter):
    """Rewrites each record in place so no handler ever sees a secret or a card number."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD_ATTRS and not name.startswith("_"):
                setattr(record, name, redact(value, name))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        elif record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecretsFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our middleware logs each request with its id; uvicorn's access line would repeat it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
