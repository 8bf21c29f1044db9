"""Type-checker cases (mypy --strict and pyright strict; see tests/core/test_typing.py). Not collected by pytest."""
