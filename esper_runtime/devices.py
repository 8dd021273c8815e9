"""Devices and the hardware labels artifacts carry.

A label names the hardware a program was built for, never merely the hardware the building machine has: a kernel
compiled with CPU tensors on a GPU host is ``cpu_x86_64``. CUDA labels are the card's short name (``h100``, ``a100``
...), else ``cuda``. Kernels of a ``cpu*`` label run on CPU models; a CUDA model takes kernels labelled for its own
card (``runs_on``).
"""

from __future__ import annotations

import platform

import torch

from esper_runtime.exceptions import DeviceUnavailable

__all__ = ["DEVICES", "DeviceUnavailable", "resolve", "hardware_label", "runs_on", "hardware_context"]

DEVICES = ("auto", "cpu", "cuda")
_CARDS = ("h200", "h100", "a100", "l40", "a10", "t4", "v100")


def resolve(name: str | torch.device) -> torch.device:
    """``auto`` is CUDA when torch sees a CUDA device, else the CPU; ``cuda`` without one is an error."""
    if isinstance(name, torch.device):
        name = name.type
    if name not in DEVICES:
        raise ValueError(f"device {name!r}: one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device: cuda was asked for, but torch sees no CUDA device")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def hardware_label(device: str | torch.device = "cpu") -> str:
    """The label of what a program built for ``device`` runs on."""
    device = resolve(device)
    if device.type == "cpu":
        return f"cpu_{platform.machine().lower()}"
    name = torch.cuda.get_device_name(device).lower()
    return next((short for short in _CARDS if short in name), "cuda")


def runs_on(hardware: str, device: str | torch.device) -> bool:
    """Whether a kernel labelled ``hardware`` is one a model on ``device`` should take."""
    device = torch.device(device) if isinstance(device, str) else device
    if device.type == "cpu":
        return hardware.startswith("cpu")
    return not hardware.startswith("cpu") and hardware == hardware_label(device)


def hardware_context(device: torch.device) -> dict[str, str]:
    """What the system state packet says about where training runs."""
    context = {"device": device.type, "hardware": hardware_label(device)}
    if device.type == "cuda":
        context["name"] = torch.cuda.get_device_name(device)
        context["cuda"] = str(torch.version.cuda)
    return context
