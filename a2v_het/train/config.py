"""The pretraining recipe's config tree; it lives in :mod:`a2v_het.recipe` (below train/ and eval/), re-exported
here for the training code and older imports."""

from __future__ import annotations

from a2v_het.recipe import (  # noqa: F401  (re-exported)
    DataConfig,
    LoggingConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
)
