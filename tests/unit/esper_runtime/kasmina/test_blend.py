"""Kasmina's Triton blend against the eager path: outputs and gradients, every lifecycle state, odd chunk sizes,
Linear and Conv2d layouts, float32 and bfloat16. On CPU it runs under Triton's interpreter (``TRITON_INTERPRET=1``,
set per test); where CUDA is present the same cases run on the GPU as compiled kernels too."""

from __future__ import annotations

import pytest
import torch
import triton

from esper_runtime.kasmina import KasminaConfig
from esper_runtime.kasmina.blend import BLEND_CODES, blend, blend_reference, interpreting
from esper_runtime.kasmina.lifecycle import Code, Command

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOLERANCE = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.fixture(params=DEVICES)
def device(request, monkeypatch):
    """A CPU tensor is blended by Triton's interpreter, a CUDA one by the compiled kernel."""
    monkeypatch.setenv("TRITON_INTERPRET", "1" if request.param == "cpu" else "0")
    return torch.device(request.param)


def _states(num_seeds: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Every code of the lifecycle at least once (cycled over the seeds), with alphas as Kasmina sets them: a
    GRAFTING seed mid-ramp (or at its ends), 1 for the other child states, 0 elsewhere."""
    codes = [list(Code)[i % len(Code)] for i in range(num_seeds)]
    alphas = []
    for k, code in enumerate(codes):
        if code == Code.GRAFTING:
            alphas.append([0.0, 0.37, 1.0, float(torch.rand((), generator=gen))][k % 4])
        else:
            alphas.append(1.0 if code in BLEND_CODES or code == Code.TRAINING else 0.0)
    return (torch.tensor([int(c) for c in codes], dtype=torch.uint8),
            torch.tensor(alphas, dtype=torch.float16))


def _check(shape, chunk, channel_dim, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = shape[channel_dim]
    num_seeds = -(-features // chunk)
    state, alpha = _states(num_seeds, gen)
    state, alpha = state.to(device), alpha.to(device)
    y0 = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    c0 = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    upstream = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)

    def run(fn):
        y, c = y0.clone().requires_grad_(), c0.clone().requires_grad_()
        out = fn(y, c, state, alpha, chunk, channel_dim)
        out.backward(upstream)
        # the reference's child gets no gradient at all where no chunk blends; the kernel's gets zeros
        return out.detach(), y.grad, torch.zeros_like(c) if c.grad is None else c.grad

    got, want = run(blend), run(blend_reference)
    for name, g, w in zip(("output", "host gradient", "child gradient"), got, want):
        assert g.dtype == dtype and g.shape == w.shape, name
        torch.testing.assert_close(g.float(), w.float(), **TOLERANCE[dtype], msg=lambda m: f"{name}: {m}")
    return state


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("features,chunk", [(39, 3), (37, 8), (13, 13), (5, 1)])
def test_linear_blend_matches_the_eager_path_in_every_state(device, dtype, features, chunk):
    state = _check((7, features), chunk, -1, dtype, device)
    if features // chunk >= len(Code):
        assert {Code(c) for c in state.tolist()} == set(Code)  # every state was in one launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_blend_matches_the_eager_path_channel_by_channel(device, dtype):
    _check((3, 29, 5, 7), 2, 1, dtype, device)  # 15 seeds, the last of one channel
    _check((2, 40, 3, 3), 3, 1, dtype, device, seed=1)


def test_extra_leading_dimensions_and_a_non_contiguous_output(device):
    _check((2, 3, 4, 21), 5, -1, torch.float32, device)
    gen = torch.Generator().manual_seed(3)
    state, alpha = _states(4, gen)
    y = torch.randn(16, 9, generator=gen).t()[:, :13].t().to(device)  # (13, 9), a transposed view
    c = torch.randn_like(y)
    torch.testing.assert_close(blend(y, c, state.to(device), alpha.to(device), 4),
                               blend_reference(y, c, state.to(device), alpha.to(device), 4))


def test_mismatched_inputs_are_refused(device):
    y = torch.randn(4, 8, device=device)
    state, alpha = torch.zeros(2, dtype=torch.uint8, device=device), torch.zeros(2, dtype=torch.float16, device=device)
    with pytest.raises(ValueError, match="does not match"):
        blend(y, torch.randn(4, 9, device=device), state, alpha, 4)
    with pytest.raises(ValueError, match="do not cover"):
        blend(y, torch.randn(4, 8, device=device), state, alpha, 3)


def test_without_cuda_or_the_interpreter_the_kernel_says_where_it_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not interpreting()
    y = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        blend(y, y.clone(), torch.zeros(2, dtype=torch.uint8), torch.zeros(2, dtype=torch.float16), 4)


# ---------------------------------------------------------------------------------------------------- in the layer
def _grown(make_model, kernels, blend_mode):
    """A wrapped MLP with two seeds grafting (mid-ramp: a linear ramp of 64 steps, so alpha is exact in float16)
    and one training, on one layer."""
    from tests.unit.esper_runtime.kasmina.conftest import Trainer

    model = make_model(blend=blend_mode, graft_steps=64, graft_ramp="linear")
    t = Trainer(model)
    for seed, kernel in ((0, "residual_mlp"), (1, "low_rank"), (2, "residual_mlp")):
        t.do(1, seed, Command.REQUEST_GERMINATION, kernels[kernel], train=0)
        t.do(1, seed, Command.PROMOTE, train=0)
    t.steps(6)
    for seed in (0, 1):  # 0 and 1 graft; 2 stays in TRAINING
        t.do(1, seed, Command.ADVANCE, train=0)
    t.steps(5)
    return model, t


def test_the_layer_blends_with_triton_as_it_does_eagerly(make_model, kernels, device, monkeypatch):
    """Two models grown alike on CPU; one blends with the kernel. On CUDA both move there and are compared in eval
    mode (the training seed's optimizer state stays on the CPU it was made on)."""
    from esper_runtime.kasmina.layer import KasminaLayer

    eager, te = _grown(make_model, kernels, "eager")
    triton_model, _ = _grown(make_model, kernels, "eager")  # grown the same way, then blended by the kernel
    for layer in triton_model.kasmina.layers:
        layer.config = layer.config.model_copy(update={"blend": "triton"})
    layer = triton_model.kasmina.layers[1]
    codes = [Code(int(c)) for c in layer.lifecycle_state.tolist()]
    assert codes[:3] == [Code.GRAFTING, Code.GRAFTING, Code.TRAINING]
    assert 0 < float(layer.alpha_blend[0]) < 1
    launches = []
    kernel_path = KasminaLayer._blend_triton
    monkeypatch.setattr(KasminaLayer, "_blend_triton", lambda self, *a: launches.append(self.path) or
                        kernel_path(self, *a))
    x = te.x[:32].to(device)
    outs = []
    for model in (eager, triton_model):
        model.to(device)
        model.train(device.type == "cpu")
        for p in model.parameters():
            p.grad = None
        torch.manual_seed(0)  # the training seed's denoising noise, the same for both
        out = model(x)
        out.pow(2).sum().backward()
        outs.append((out.detach(), [p.grad for p in model.parameters() if p.grad is not None]))
    assert launches == [layer.path]  # the seeded layer took the kernel path, once; the eager model never did
    assert outs[1][0].device.type == device.type
    close = dict(rtol=1e-6, atol=1e-6) if device.type == "cpu" else dict(rtol=1e-5, atol=1e-5)  # GPU FMA rounding
    torch.testing.assert_close(outs[1][0], outs[0][0], **close)
    assert len(outs[0][1]) == len(outs[1][1])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(b, a, **close)


def test_blend_triton_on_a_cpu_model_without_the_interpreter_is_a_clear_error(make_model, kernels, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model, t = _grown(make_model, kernels, "eager")
    for layer in model.kasmina.layers:
        layer.config = layer.config.model_copy(update={"blend": "triton"})
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        model(t.x[:8])


def test_the_default_blend_is_eager_on_cpu(make_model, kernels, monkeypatch):
    """auto: eager unless the output is a CUDA tensor, so a CPU run never needs Triton."""
    import sys

    assert KasminaConfig().blend == "auto"
    monkeypatch.delitem(sys.modules, "esper_runtime.kasmina.blend", raising=False)
    model, t = _grown(make_model, kernels, "auto")
    model(t.x[:8])
    assert "esper_runtime.kasmina.blend" not in sys.modules


# ------------------------------------------------------------------------------------------- compiled for a card
def _ptx(kernel, arch: int, dtype: str, seed_by_row: bool, backward: bool) -> str:
    """The kernel compiled ahead of time for an NVIDIA card of compute capability ``arch`` (no GPU needed: Triton's
    own ptxas), as a launch would specialize it for 16-aligned pointers and a 16-divisible width."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from esper_runtime.kasmina import blend as module

    ptr = {"float32": "*fp32", "bfloat16": "*bf16"}[dtype]
    signature = dict(zip(kernel.arg_names, [ptr] * 4 + ["*u8", "*fp16"] + ["i32"] * 4 + ["constexpr"] * 5))
    bc = 1024 if seed_by_row else 256
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={"BLEND_BITS": module._BLEND_BITS, "SEED_BY_ROW": seed_by_row, "BACKWARD": backward,
                                   "BR": 4096 // bc, "BC": bc},
                       attrs={(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 5, 7)})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    assert compiled.asm.get("cubin"), "ptxas made no machine code"
    return compiled.asm["ptx"]


@pytest.mark.parametrize("arch", [90, 80])  # H100 / H200, A100
@pytest.mark.parametrize("seed_by_row", [False, True])
def test_the_kernels_compile_for_the_card_without_a_division_per_element(monkeypatch, arch, seed_by_row):
    """What the interpreter cannot show: the kernels go through Triton's compiler to machine code for the cards the
    GPU check runs on, and the code finds seeds per tile row or column (no 64-bit division, which the GPU runs as
    a long sequence per element) and moves data in 128-bit loads and stores."""
    import re

    from esper_runtime.kasmina.blend import _compiled

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kernel = _compiled()
    for backward in (False, True):
        for dtype in ("float32", "bfloat16"):
            ptx = _ptx(kernel, arch, dtype, seed_by_row, backward)
            case = f"{'backward' if backward else 'forward'}, {dtype}"
            assert not re.search(r"\b(div|rem)\.[su]64\b", ptx), f"{case}: 64-bit division in the PTX"
            assert re.search(r"ld\.global(\.\w+)*\.v[248]\.b(32|64)", ptx), f"{case}: no vector loads"
