"""The operators' status page (``syncnotify admin``)."""
