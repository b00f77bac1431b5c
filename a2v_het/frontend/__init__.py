"""Frontends: waveforms at any sample rate -> tokens for the encoder. Selected by ``FrontendConfig.name``."""

from __future__ import annotations

from a2v_het.frontend.base import Frontend, FrontendOutput
from a2v_het.frontend.config import (
    FRONTEND_NAMES,
    AaPEConfig,
    ConvExtractorConfig,
    FrontendConfig,
    GaborStrfConfig,
    HeterodyneConfig,
    LogMelConfig,
    LogMelPatchConfig,
    SincNetConfig,
)


def build_frontend(cfg: FrontendConfig) -> Frontend:
    if cfg.name == "heterodyne":
        from a2v_het.frontend.heterodyne_frontend import HeterodyneFrontend

        return HeterodyneFrontend(cfg)
    if cfg.name == "conv":
        from a2v_het.frontend.conv_extractor import ConvExtractor

        return ConvExtractor(cfg)
    if cfg.name == "logmel":
        from a2v_het.frontend.logmel import LogMelFrontend

        return LogMelFrontend(cfg)
    if cfg.name == "sincnet":
        from a2v_het.frontend.sincnet import SincNetFrontend

        return SincNetFrontend(cfg)
    if cfg.name == "gabor_strf":
        from a2v_het.frontend.gabor_strf import GaborStrfFrontend

        return GaborStrfFrontend(cfg)
    if cfg.name == "logmel_patch":
        from a2v_het.frontend.logmel_patch import LogMelPatchFrontend

        return LogMelPatchFrontend(cfg)
    if cfg.name == "aape":
        from a2v_het.frontend.aape import AaPEFrontend

        return AaPEFrontend(cfg)
    raise ValueError(f"unknown frontend {cfg.name!r}")


__all__ = [
    "FRONTEND_NAMES",
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
