"""On/off switches read from bundle configs and command lines.

``python -m monai.bundle run --use_rau false`` hands the string ``'false'`` to the config (the
command-line parser only turns ``False`` / ``True`` into booleans), and ``bool('false')`` is True:
an ablation run would silently keep the module it meant to remove. Every component that takes a
switch checks it with :func:`require_bool`, which accepts real booleans only and names the option
and the fix otherwise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["require_bool"]


def require_bool(value, name: str, owner: str) -> bool:
    """``value`` as a Python bool; ``TypeError`` naming ``owner``'s option ``name`` if it is not one.

    Accepts ``bool`` and ``numpy.bool_``. Anything else (the strings ``'false'`` / ``'true'`` a
    command line produces, 0 / 1, None) raises, because a config expression such as
    ``"$50 if @deep_supervision else 0"`` would read the same string as true.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    hint = f" (on the command line write --{name} {str(value).strip().capitalize()})" if str(value).strip().lower() in ("true", "false") else ""
    raise TypeError(f"{owner}: {name} must be true or false, got {value!r}{hint}")
