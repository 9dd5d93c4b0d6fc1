"""syncnotify: what an operator runs (command line, supervisor, status, dead letters, status page, simulator)."""
