"""Frontends: waveforms at any sample rate -> tokens for the encoder. Selected by ``FrontendConfig.name``."""

from __future__ import annotations

from a2v_het.frontend.base import Frontend, FrontendOutput
from a2v_het.frontend.config import ConvExtractorConfig, FrontendConfig, HeterodyneConfig, LogMelConfig


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
    raise ValueError(f"unknown frontend {cfg.name!r}")


__all__ = [
    "ConvExtractorConfig",
    "Frontend",
    "FrontendConfig",
    "FrontendOutput",
    "HeterodyneConfig",
    "LogMelConfig",
    "build_frontend",
]
