"""The HTTP side: answers Exchange at once and puts the raw payload on the queue (or the spool)."""
