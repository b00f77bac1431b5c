"""The torch floor in pyproject.toml covers the newest torch API the code calls. An old torch cannot be installed
cheaply here, so the check is a table: each API the code relies on, the release that introduced it (from PyTorch's
release notes / the PR that added it), and a grep that the code really calls it (an API the code stops using should
leave the table, and so may lower the floor)."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# API (as written in the code) -> (major, minor) of the first torch release that has it.
NEEDS = {
    "torch.serialization.safe_globals": (2, 5),  # pytorch/pytorch#127939, merged after the 2.4 branch cut
    "torch.get_autocast_dtype": (2, 4),  # device-generic autocast API
    "torch.is_autocast_enabled(x.device.type)": (2, 4),  # the device-type argument came with it
}


def _floor() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"torch>=(\d+)\.(\d+)[^"]*"', text)
    assert m, "pyproject.toml has no torch>=X.Y requirement"
    return int(m.group(1)), int(m.group(2))


def _code() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "a2v_het").rglob("*.py")))


def test_torch_floor_covers_every_api_the_code_calls():
    code = _code()
    used = {api: v for api, v in NEEDS.items() if api in code}
    assert used, "none of the listed APIs is used any more: revisit the floor"
    need = max(used.values())
    assert _floor() >= need, f"pyproject.toml says torch>={_floor()}, the code needs {need}: {used}"


def test_the_listed_apis_exist_in_the_installed_torch():
    assert hasattr(torch.serialization, "safe_globals") and hasattr(torch, "get_autocast_dtype")
    assert torch.is_autocast_enabled("cpu") in (True, False)
    installed = tuple(int(x) for x in torch.__version__.split(".")[:2])
    assert installed >= _floor()
