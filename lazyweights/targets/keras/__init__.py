"""The Keras 3 target: matching checkpoint weights to a model's variables, and filling them layer by layer.

:mod:`.loader` pairs weights with variables (topologically or by name, as
Keras does) and runs the executor one layer per group; :mod:`.config`
translates Keras 2 / tf-keras model configs for Keras 3.
"""

from .loader import (
    KerasLoader,
    assign,
    import_keras,
    legacy_groups,
    load_v3_state,
    model_order_keys,
    optimizer_group,
    optimizer_pairs,
    v3_store,
)

__all__ = [
    "KerasLoader",
    "assign",
    "import_keras",
    "legacy_groups",
    "load_v3_state",
    "model_order_keys",
    "optimizer_group",
    "optimizer_pairs",
    "v3_store",
]
