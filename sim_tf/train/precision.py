"""The one place that decides a run's precision: Keras dtype policy and loss scaling for ``--amp``."""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras


def resolve_precision(amp: bool, amp_dtype: str, num_gpus: int) -> tuple[str, bool]:
    """(Keras dtype policy, whether to use dynamic loss scaling) for ``--amp`` / ``--amp_dtype``.

    ``--amp`` means float16 with dynamic loss scaling on GPUs and bfloat16 on CPUs (float16 without
    XLA runs tens of times slower than float32 on CPUs; bfloat16 has float32's range, so needs no scaling).
    """
    if not amp:
        return "float32", False
    dtype = amp_dtype
    if dtype == "auto":
        dtype = "float16" if num_gpus > 0 else "bfloat16"
    return f"mixed_{dtype}", dtype == "float16"


@contextlib.contextmanager
def global_dtype_policy(policy: str | None) -> Iterator[None]:
    """Keras's global dtype policy set to ``policy`` (None: left as it is) inside the block, restored after.

    Layers take the global policy when they are created, and so do the sub-layers a layer creates, which
    do not inherit their parent's ``dtype``: a whole model is put under mixed precision this way.
    """
    previous = keras.mixed_precision.global_policy()
    if policy:
        keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
