"""localstripe, bound to 127.0.0.1, its store kept in our data folder (dev and tests only)."""

from __future__ import annotations

import argparse
import logging
import pickle
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description="Local Stripe emulator for billing dev and tests")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-file", type=Path, default=None, help="persist the store here")
    args = parser.parse_args()

    from aiohttp import web
    from localstripe import resources, server

    from app.dev.stripe_clock import install_test_clocks
    from app.dev.stripe_extensions import install_extensions
    from app.dev.stripe_store import install_store_index

    data_file: Path | None = args.data_file

    def load(store: resources.Store) -> None:
        if data_file is not None and data_file.exists():
            with data_file.open("rb") as handle:
                store.update(pickle.load(handle))  # noqa: S301  (our own file)

    def dump(store: resources.Store) -> None:
        if data_file is not None:
            tmp = data_file.with_suffix(".tmp")
            with tmp.open("wb") as handle:
                pickle.dump(dict(store), handle, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(data_file)

    # The stock store writes /tmp/localstripe.pickle on every request; ours writes our file or nothing.
    resources.Store.try_load_from_disk = load
    resources.Store.dump_to_disk = dump
    install_store_index()
    resources.store.try_load_from_disk()
    install_extensions(server.app)
    install_test_clocks(server.app)
    logging.basicConfig(level=logging.WARNING)
    web.run_app(server.app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
