"""Distribution applied from outside the single-device model (DESIGN.md §1, §5.4; STYLE.md).

``model/arch`` only exposes plain hook attributes (``ExpertTransformer.token_sharding``,
``SelfAttention.head_exchange``, ``WorldModel.cache_heads``); this package fills them.
"""

from __future__ import annotations

from worldloop.model.parallel.ulysses import SequenceParallel, apply_sequence_parallel

__all__ = ["SequenceParallel", "apply_sequence_parallel"]
