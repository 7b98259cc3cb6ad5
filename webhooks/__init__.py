"""The HTTP side of Rinnovo: the provider-facing receiver and the admin API."""
