"""``python -m is_kernels.train``: see :mod:`is_kernels.train.cli`."""
from .cli import main

raise SystemExit(main())
