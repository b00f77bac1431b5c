"""The student's light decoder (data2vec 2.0 audio): the encoder output with mask embeddings in the masked slots
-> predicted targets at every token. 1-D convolutions only, so it is cheap next to the encoder and local: each
masked token is predicted from its neighbourhood of contextualised visible tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.model.config import ModelConfig


class Decoder(nn.Module):
    """Linear(D -> Dd), then ``decoder_layers`` x [grouped Conv1d(kernel, 'same') -> LayerNorm (no affine, as data2vec
    2.0) -> GELU] each with a residual connection, then Linear(Dd -> D)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dd = cfg.decoder_dim
        k = cfg.decoder_kernel
        self.in_proj = nn.Linear(cfg.embed_dim, dd)
        self.convs = nn.ModuleList(nn.Conv1d(dd, dd, k, padding=k // 2, groups=cfg.decoder_groups)
                                   for _ in range(cfg.decoder_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dd, elementwise_affine=False) for _ in range(cfg.decoder_layers))
        self.out_proj = nn.Linear(dd, cfg.embed_dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """x (R, N, D) full-length (visible + mask embeddings), padding_mask (R, N) True = pad -> (R, N, D).

        Padded tokens are zeroed before every conv so predictions near a clip's end do not read padding.
        """
        n = x.shape[1]
        h = self.in_proj(x)
        for conv, norm in zip(self.convs, self.norms):
            inp = h if padding_mask is None else h.masked_fill(padding_mask[..., None], 0.0)
            y = conv(inp.transpose(1, 2))[..., :n].transpose(1, 2)  # [:n] trims even kernels' extra step
            h = h + F.gelu(norm(y))
        return self.out_proj(h)
