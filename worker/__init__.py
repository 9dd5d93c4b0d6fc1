"""The RQ side: parses queued payloads and stores deduplicated, chain-ordered rows."""
