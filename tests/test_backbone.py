"""The shared Backbone (frontend + token norm/projection + encoder): held by the data2vec model and by the call
detector (which builds nothing else of pretraining), under the parameter names of checkpoints and exports."""

import dataclasses

import pytest
import torch

from a2v_het.frontend import FrontendConfig, build_frontend
from a2v_het.model.backbone import Backbone, adopt_parts
from a2v_het.model.classifier import CallDetector
from a2v_het.model.config import ModelConfig
from a2v_het.model.data2vec import Data2VecModel
from a2v_het.model.decoder import Decoder

TINY = ModelConfig(embed_dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_groups=4, decoder_layers=1,
                   decoder_kernel=3, pos_conv_depth=1, pos_conv_kernel=5, pos_conv_groups=4, clone_batch=2,
                   average_top_k_layers=2)
FRONTEND = FrontendConfig(dim=16)  # != embed_dim: the projection is a Linear
PARTS = ("frontend", "token_norm", "token_proj", "encoder")


def _flat_layout(owner_parts: dict[str, torch.nn.Module], own: tuple[str, ...] = ()) -> set[str]:
    """The keys of the flat module the backbone replaced: each part's keys under its attribute name."""
    keys = {f"{name}.{k}" for name, part in owner_parts.items() for k in part.state_dict()}
    return keys | set(own)


def _clips():
    torch.manual_seed(5)
    sr = 8000
    return torch.randn(2, sr) * 0.1, torch.full((2,), sr), torch.tensor([sr, sr // 2])


def test_names_are_the_flat_ones_of_checkpoints_written_before():
    torch.manual_seed(0)
    model = Data2VecModel(TINY, build_frontend(FRONTEND))
    parts = {n: getattr(model.backbone, n) for n in PARTS}
    want = _flat_layout({**parts, "decoder": model.decoder}, ("mask_embedding",))
    sd = model.state_dict()
    assert set(sd) == want and {n for n, _ in model.named_parameters()} <= want
    assert not any(k.startswith("backbone") for k in sd) and not any(k.startswith("backbone") for k in sd._metadata)
    # the old order: own parameter first, then the parts in their attribute order, then the decoder
    assert list(sd)[0] == "mask_embedding" and next(k for k in sd if not k.startswith(PARTS + ("mask",))) \
        .startswith("decoder.")
    assert set(Backbone.from_config(TINY, FRONTEND).state_dict()) == _flat_layout(parts)
    det = CallDetector(TINY, FRONTEND, 3)
    assert set(det.state_dict()) == _flat_layout({**parts, "head": det.head})
    assert [n for n, _ in det.named_parameters()] == list(det.state_dict())  # DeepSpeed saves frozen ones by name


def test_the_parts_are_the_backbones_and_parameters_keep_their_order():
    torch.manual_seed(0)
    model = Data2VecModel(TINY, build_frontend(FRONTEND))
    for name in PARTS:
        assert getattr(model, name) is getattr(model.backbone, name)
    want = [model.mask_embedding, *model.backbone.parameters(), *model.decoder.parameters()]
    assert [id(p) for p in model.parameters()] == [id(p) for p in want]  # the optimizer's (and ZeRO's) order
    # one copy of each parameter; the parts move and switch mode with the owner
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))
    model.eval()
    assert not any(m.training for m in model.backbone.modules() if m is not model.backbone)
    model.to(torch.float64)
    assert model.backbone.encoder.blocks[0].attn.qkv.weight.dtype == torch.float64


def test_a_state_dict_of_the_old_layout_loads_strictly():
    """The old models registered the four parts themselves: a state dict under those names loads into the new
    ones (model, detector and bare backbone) strictly."""
    torch.manual_seed(0)
    a = Data2VecModel(TINY, build_frontend(FRONTEND))
    old = {k: v.clone() for k, v in a.state_dict().items()}
    torch.manual_seed(1)
    b = Data2VecModel(TINY, build_frontend(FRONTEND))
    result = b.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in old.items())
    bb = Backbone.from_config(TINY, FRONTEND)
    bb.load_state_dict({k: v for k, v in old.items() if k.startswith(PARTS)}, strict=True)
    assert torch.equal(bb.encoder.blocks[0].attn.qkv.weight, a.encoder.blocks[0].attn.qkv.weight)


def test_adopt_parts_refuses_a_clash_and_a_part_with_own_parameters():
    class Clash(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(2, 2)
            adopt_parts(self, "backbone", Backbone.from_config(TINY, FRONTEND))

    with pytest.raises(ValueError, match="already has 'encoder'"):
        Clash()
    part = torch.nn.Module()
    part.w = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="of its own"):
        adopt_parts(torch.nn.Module(), "part", part)


def test_the_detector_builds_only_the_backbone_and_its_head():
    """No decoder, mask embedding or teacher; the backbone's initial weights are those of a pretraining model built
    from the same seed (the backbone is drawn first in both), the head is drawn right after the backbone."""
    torch.manual_seed(0)
    det = CallDetector(TINY, FRONTEND, 3)
    assert not any(isinstance(m, (Decoder, Data2VecModel)) for m in det.modules())
    assert det.frontend is det.backbone.frontend and det.encoder is det.backbone.encoder
    assert not hasattr(det, "teacher") and "mask_embedding" not in det.state_dict()
    torch.manual_seed(0)
    pre = Data2VecModel(TINY, build_frontend(FRONTEND))
    for k, v in det.backbone.state_dict().items():
        assert torch.equal(v, pre.state_dict()[k]), k
    torch.manual_seed(0)
    Backbone.from_config(TINY, FRONTEND)
    head = torch.nn.Linear(TINY.embed_dim, 3)
    assert torch.equal(head.weight, det.head.weight) and torch.equal(head.bias, det.head.bias)
    assert det.token_rate == FRONTEND.token_rate and det.cfg is det.backbone.cfg


def test_backbone_encode_is_the_encoder_on_its_tokens():
    torch.manual_seed(0)
    model = Data2VecModel(TINY, build_frontend(FRONTEND)).eval()
    wave, rates, lengths = _clips()
    with torch.no_grad():
        tokens, pad, _ = model.backbone.tokens(wave, rates, lengths)
        final, layers = model.encoder(model.encoder.add_position(tokens, pad), pad, outputs="residual")
        got_final, got_layers, got_pad = model.backbone.encode(wave, rates, lengths, outputs="residual")
        enc_final, _, _ = model.encode(wave, rates, lengths)
    assert torch.equal(got_final, final) and torch.equal(got_pad, pad) and torch.equal(enc_final, final)
    assert all(torch.equal(a, b) for a, b in zip(got_layers, layers))
    # the z-norm is the backbone's: off, the frontend sees the raw wave
    raw = Backbone(dataclasses.replace(TINY, z_normalize=False), model.frontend).eval()
    with torch.no_grad():
        assert not torch.equal(raw.tokens(wave * 10, rates, lengths)[0], raw.tokens(wave, rates, lengths)[0])


def test_finetune_config_is_composed_not_a_pretrain_config():
    from a2v_het.recipe import FinetuneConfig, PretrainConfig

    assert not issubclass(FinetuneConfig, PretrainConfig)
    pre = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    ft = {f.name: f.type for f in dataclasses.fields(FinetuneConfig)}
    assert ft == {**pre, "finetune": ft["finetune"]}  # the same run sections (recipe keys) plus finetune


def test_the_finetune_objective_holds_a_detector_under_its_names():
    from a2v_het.config import load_config
    from a2v_het.recipe import FinetuneConfig
    from a2v_het.train.finetune import FinetuneObjective

    cfg = load_config(FinetuneConfig, None, ["model.embed_dim=32", "model.depth=2", "model.num_heads=2",
                                             "model.decoder_dim=16", "model.average_top_k_layers=2", "frontend.dim=32",
                                             "finetune.classes=[a,b]", "finetune.freeze_frontend=true"])
    torch.manual_seed(0)
    obj = FinetuneObjective(cfg)
    assert isinstance(obj.detector, CallDetector) and not isinstance(obj, CallDetector)
    torch.manual_seed(0)
    det = CallDetector(cfg.model, cfg.frontend, 2, freeze_frontend=True)
    # the names (checkpoints; DeepSpeed's frozen-parameter state under ZeRO-2) and values of a bare detector's
    assert [n for n, _ in obj.named_parameters()] == [n for n, _ in det.named_parameters()]
    assert all(torch.equal(v, det.state_dict()[k]) for k, v in obj.state_dict().items())
    assert {n for n, p in obj.named_parameters() if not p.requires_grad} == \
        {n for n in obj.state_dict() if n.startswith("frontend.") and n in dict(obj.named_parameters())}
