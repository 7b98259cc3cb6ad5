"""The read models operators look at: the rows the CLI, the admin API and the admin page list and
show, as typed records (instants as ISO 8601 UTC strings, ready for JSON), and the filters they
are selected by. Read only: every function takes the connection first and writes nothing."""
