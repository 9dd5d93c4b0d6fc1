"""Benchmarks of syncnotify (``make bench``) and the Exchange simulator (``syncnotify.simulator.fleet``).

Nothing in the product imports this package except the ``simulate`` command; it may import the product.
"""
