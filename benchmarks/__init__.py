"""Benchmarks: scripts that measure and print figures; nothing here is imported by the service."""
