"""A toy experiment registered from outside the study's package, by tests/test_registry.py: tiny generated data, a
run per seed, a report with one claim. It shows what a new experiment needs (see docs/extending.md)."""
