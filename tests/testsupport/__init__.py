"""Helpers shared by the tests (checkpoint builders, image makers, servers)."""
