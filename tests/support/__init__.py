"""Shared test helpers: fixtures, worker drivers and row readers used by several test modules.

Test modules import helpers from here, never from another test module or from `conftest`; the
fixtures in `tests.support.fixtures` are registered for every test by `tests/conftest.py`.
"""
