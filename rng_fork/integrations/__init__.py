"""Optional integrations with training frameworks.

Each submodule needs its framework installed and is imported on its own, so that
``import rng_fork`` never imports a framework:

- :mod:`rng_fork.integrations.lightning`: :class:`~rng_fork.integrations.lightning.IsolateRng`,
  a Lightning callback that keeps validation from changing training
  (``pip install lightning``).
- :mod:`rng_fork.integrations.transformers`:
  :func:`~rng_fork.integrations.transformers.isolate_evaluation`, which keeps
  evaluation during ``transformers.Trainer.train()`` from changing training
  (``pip install transformers accelerate``).
"""
