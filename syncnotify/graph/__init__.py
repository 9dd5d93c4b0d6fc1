"""Graph subscriptions syncnotify creates and keeps alive (SPEC §10): the REST client, its credentials and errors."""
