"""Robust media I/O and run plans: photos (:mod:`.images`), which inputs go to which outputs
(:mod:`.plans`), and the resumable per-image driver with its manifest (:mod:`.manifest`).

The bottom of the product side: imports nothing else of the package.
"""
