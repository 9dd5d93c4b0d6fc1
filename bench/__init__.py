"""Benchmarks of syncnotify (``make bench``) and the Exchange simulator (``bench.simulate``).

Nothing in the product imports this package except the ``simulate`` command; it may import the product.
"""
