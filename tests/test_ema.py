"""EMA teacher: decay schedule and exact update arithmetic."""

import pytest
import torch
from torch import nn

from a2v_het.model.ema import EMATeacher, ema_decay_at


def test_schedule_endpoints_linearity_and_constant_after():
    assert ema_decay_at(0, 0.999, 0.99999, 1000) == pytest.approx(0.999, abs=0)
    assert ema_decay_at(1000, 0.999, 0.99999, 1000) == 0.99999
    assert ema_decay_at(5000, 0.999, 0.99999, 1000) == 0.99999
    assert ema_decay_at(250, 0.5, 1.0, 1000) == 0.625
    assert ema_decay_at(500, 0.5, 1.0, 1000) == 0.75
    steps = [0, 100, 200, 300]
    values = [ema_decay_at(s, 0.9, 0.99, 1000) for s in steps]
    diffs = [b - a for a, b in zip(values, values[1:])]
    assert max(diffs) - min(diffs) < 1e-12 and diffs[0] == pytest.approx(0.009)
    assert ema_decay_at(0, 0.9, 0.99, 0) == 0.99  # no anneal: the end value from the start


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.register_buffer("count", torch.zeros(1))


def set_params(m: Tiny, w, b, count):
    with torch.no_grad():
        m.lin.weight.copy_(torch.tensor([w]))
        m.lin.bias.copy_(torch.tensor([b]))
        m.count.fill_(count)


def test_update_is_exact_and_copies_buffers():
    student = Tiny()
    set_params(student, [1.0, 2.0], -4.0, 0)
    teacher = EMATeacher(student)
    set_params(student, [3.0, -2.0], 4.0, 7)
    teacher.update(student, 0.75)
    # 0.75 * 1 + 0.25 * 3 = 1.5; 0.75 * 2 + 0.25 * -2 = 1.0; 0.75 * -4 + 0.25 * 4 = -2.0 (all exact in binary)
    assert teacher.model.lin.weight.tolist() == [[1.5, 1.0]]
    assert teacher.model.lin.bias.tolist() == [-2.0]
    assert teacher.model.count.tolist() == [7.0]
    teacher.update(student, 0.5)  # 0.5 * 1.5 + 0.5 * 3 = 2.25; 0.5 * 1 + 0.5 * -2 = -0.5; 0.5 * -2 + 0.5 * 4 = 1
    assert teacher.model.lin.weight.tolist() == [[2.25, -0.5]]
    assert teacher.model.lin.bias.tolist() == [1.0]
    teacher.update(student, 0.0)
    assert torch.equal(teacher.model.lin.weight, student.lin.weight.detach())


def test_decay_one_freezes_even_against_nan():
    student = Tiny()
    teacher = EMATeacher(student)
    before = teacher.model.lin.weight.clone()
    with torch.no_grad():
        student.lin.weight.fill_(float("nan"))
    teacher.update(student, 1.0)
    assert torch.equal(teacher.model.lin.weight, before)


def test_teacher_is_an_independent_frozen_fp32_copy():
    student = Tiny().to(torch.bfloat16)
    teacher = EMATeacher(student)
    assert not isinstance(teacher, nn.Module)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training
    with torch.no_grad():
        student.lin.weight.add_(1.0)
    assert not torch.equal(teacher.model.lin.weight, student.lin.weight.float())
    teacher.update(student, 0.5)  # bf16 student is averaged into the fp32 teacher
    assert teacher.model.lin.weight.dtype == torch.float32


def test_state_dict_round_trip_and_mismatch_error():
    a, b = EMATeacher(Tiny()), EMATeacher(Tiny())
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.model.lin.weight, b.model.lin.weight)
    assert not any(p.requires_grad for p in b.model.parameters())

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.other = nn.Linear(2, 1)

    with pytest.raises(ValueError):
        a.update(Other(), 0.5)
