"""billing: the payment and subscription service of an API marketplace."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("billing")
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0.0.0+unknown"
