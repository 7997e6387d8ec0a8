"""End-to-end comparison of the sampling methods: training on Fashion-MNIST.

Run ``python -m is_kernels.train --help`` (or ``is-kernels-train``). Modules: ``data``
(IDX reader), ``models`` (MLP, CNN), ``methods`` (name -> sampler registry), ``loop``
(one training run), ``report`` (table, plot, JSON), ``cli``.
"""
