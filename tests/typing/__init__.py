"""Type-checker cases (mypy --strict and pyright strict; see tests/test_typing.py). Not collected by pytest."""
