"""One folder per platform under test (see harness/target.py and docs/writing-a-target.md)."""
