"""a2v_het: self-supervised pretraining for animal sounds with a learnable heterodyne frontend."""

__version__ = "0.1.0"
