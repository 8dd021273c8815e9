"""Hardware labels say what a program was built for, on any host: a CPU build on a GPU machine is a CPU kernel."""

from __future__ import annotations

import pytest
import torch

from esper_runtime import devices
from esper_runtime.devices import DeviceUnavailable, hardware_context, hardware_label, resolve, runs_on


@pytest.fixture
def gpu_host(monkeypatch):
    """What torch says on a machine with an H100 (nothing here launches on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")


def test_a_cpu_build_is_labelled_cpu_on_a_gpu_host(gpu_host):
    assert hardware_label("cpu").startswith("cpu_")
    assert hardware_label("cuda") == "h100"
    assert resolve("auto").type == "cuda" and resolve("cpu").type == "cpu"


def test_a_cpu_host_labels_cpu_and_refuses_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware_label("auto") == hardware_label("cpu")
    with pytest.raises(DeviceUnavailable, match="no CUDA device"):
        resolve("cuda")
    with pytest.raises(ValueError, match="one of auto, cpu, cuda"):
        resolve("tpu")


def test_a_model_takes_kernels_built_for_its_own_hardware(gpu_host):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runs_on("cpu_x86_64", cpu) and runs_on("cpu", cpu) and not runs_on("h100", cpu)
    assert runs_on("h100", cuda) and not runs_on("a100", cuda) and not runs_on("cpu_x86_64", cuda)


def test_the_state_packet_names_the_hardware(gpu_host, monkeypatch):
    monkeypatch.setattr(devices.torch.version, "cuda", "12.8")
    assert hardware_context(torch.device("cpu")) == {"device": "cpu", "hardware": hardware_label("cpu")}
    assert hardware_context(torch.device("cuda")) == {"device": "cuda", "hardware": "h100",
                                                      "name": "NVIDIA H100 80GB HBM3", "cuda": "12.8"}
