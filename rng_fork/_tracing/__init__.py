"""The machinery behind :func:`rng_fork.trace`: where code consumed randomness.

- ``frames``: which frames are the user's, and how a call site is written.
- ``recorder``: one open trace: every watched source's state at the last
  checkpoint, and the events that explain each change since.
- ``calls``: calls of Python's and NumPy's global generators and of torch's
  generator methods, seen through ``sys.monitoring`` (3.12+) or ``sys.setprofile``.
- ``chain``: on 3.11, the profile function installed before (cProfile, ...), kept
  getting every event and put back.
- ``ops``: torch ops that draw, seen through a dispatch mode.
- ``hub``: installs all hooks for the first open trace and removes them with the last.

Nothing here is imported by ``import rng_fork``; nothing is installed until a trace opens.
"""
