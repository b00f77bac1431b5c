"""Frontends: waveforms at any sample rate -> tokens for the encoder. Selected by ``FrontendConfig.name``."""

from __future__ import annotations

import importlib

from a2v_het.frontend.base import Frontend, FrontendOutput
from a2v_het.frontend.config import (
    FRONTEND_NAMES,
    FRONTENDS,
    AaPEConfig,
    ConvExtractorConfig,
    FrontendConfig,
    FrontendSpec,
    GaborStrfConfig,
    HeterodyneConfig,
    LogMelConfig,
    LogMelPatchConfig,
    SincNetConfig,
)


def build_frontend(cfg: FrontendConfig) -> Frontend:
    """The frontend ``cfg.name`` names, from the registry :data:`FRONTENDS`."""
    if cfg.name not in FRONTENDS:
        raise ValueError(f"unknown frontend {cfg.name!r}; choose from {list(FRONTENDS)}")
    module, cls = FRONTENDS[cfg.name].builder.split(":")
    return getattr(importlib.import_module(module), cls)(cfg)


__all__ = [
    "FRONTEND_NAMES",
    "FRONTENDS",
    "FrontendSpec",
    "AaPEConfig",
    "GaborStrfConfig",
    "LogMelPatchConfig",
    "SincNetConfig",
    "ConvExtractorConfig",
    "Frontend",
    "FrontendConfig",
    "FrontendOutput",
    "HeterodyneConfig",
    "LogMelConfig",
    "build_frontend",
]
