"""Customer emails: templates, rendering and transports. Knows nothing about the database."""
