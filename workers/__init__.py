"""Rinnovo's back end: configuration, database, broker, actors, lifecycle, clock and CLI."""
