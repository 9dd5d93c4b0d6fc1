"""A fake Exchange (and, later, Graph) that posts real-format notifications: ``syncnotify simulate``."""
