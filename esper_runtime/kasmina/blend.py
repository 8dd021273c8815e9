"""The seed blend of a whole layer in one Triton launch (appendix K): the kernel reads each seed's state code and
alpha from the layer's state tensors and computes, for every element of the layer's output,

    out = chunk + alpha * (child - chunk)   where the element's seed is on the blending path (GRAFTING .. FOSSILIZED)
    out = child                             where that alpha is 1
    out = chunk                             for every other seed (dormant, training beside the host, culled ...)

``child`` is a tensor of the output's shape holding each blending seed's child output in its chunk (what is
elsewhere is never read). The backward is a second launch: the output's gradient goes to the host by ``1 - alpha``
and to the child by ``alpha`` on blending chunks, and to the host alone elsewhere — what autograd does for the
eager path in ``KasminaLayer._forward_seeds``. Arithmetic is float32 whatever the tensors' dtype (float32, bfloat16,
float16); alpha is read as the state tensor holds it (float16).

The output is seen as a matrix tiled by the launch (``Layout``): a Linear's (..., features) output as
(numel / features, features), each column one seed's; a Conv2d's (B, C, H, W) as (B·C, H·W), each row one channel's,
so a seed is found with a division per row or column of a tile, never per element (64-bit division is a long
instruction sequence on a GPU, and would make a memory-bound kernel compute-bound). The kernel runs on CUDA tensors, and on CPU
tensors under Triton's interpreter (``TRITON_INTERPRET=1``), which is how CI checks it against the eager path.

Triton reads ``TRITON_INTERPRET`` when a function is decorated, so the kernels are decorated on first use (once per
mode), not when this module is imported; the layer imports this module only when it blends with Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from esper_runtime.kasmina.lifecycle import CHILD_STATES, Code

__all__ = ["BLEND_CODES", "blend", "blend_reference", "interpreting", "triton_blend_available"]

# the states whose chunk is the blend of host and child (TRAINING's child learns beside an identity host path)
BLEND_CODES = CHILD_STATES - {Code.TRAINING}
_BLEND_BITS = sum(1 << int(c) for c in BLEND_CODES)
_TILE = 4096  # elements a program blends
_TILE_COLS = 256  # at most this many columns of a tile whose seeds follow its columns (Linear)
_TILE_COLS_ROW = 1024  # and of one whose seeds follow its rows (Conv2d: a row is a channel's H·W)
_kernels: dict[bool, object] = {}  # interpreting? -> the decorated kernel


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter in this process (``TRITON_INTERPRET=1``)."""
    return bool(triton.knobs.runtime.interpret)


def triton_blend_available(t: torch.Tensor) -> bool:
    """Whether the Triton blend can run on ``t``: a CUDA tensor, or any tensor under the interpreter."""
    return t.is_cuda or interpreting()


def _blend_kernel(x_ptr, child_ptr, out_ptr, out_child_ptr, state_ptr, alpha_ptr, R, C, features, chunk,
                  BLEND_BITS: tl.constexpr, SEED_BY_ROW: tl.constexpr, BACKWARD: tl.constexpr, BR: tl.constexpr,
                  BC: tl.constexpr):
    """Forward: ``x`` is the layer's output, ``child`` the children's, the blend goes to ``out``. Backward: ``x`` is
    the output's gradient, the host's share goes to ``out`` and the child's to ``out_child``. One tile of BR x BC."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = (rows < R)[:, None] & (cols < C)[None, :]
    # a seed per row or per column of the tile: one division per row or column, none per element
    if SEED_BY_ROW:
        seed = ((rows % features) // chunk)[:, None]
        seed_mask = (rows < R)[:, None]
    else:
        seed = (cols // chunk)[None, :]
        seed_mask = (cols < C)[None, :]
    code = tl.load(state_ptr + seed, mask=seed_mask, other=0).to(tl.int32)
    a = tl.load(alpha_ptr + seed, mask=seed_mask, other=0.0).to(tl.float32)
    blending = ((BLEND_BITS >> code) & 1) != 0
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        w = tl.where(blending, tl.where(a >= 1.0, 1.0, a), 0.0)  # the child's share of the output
        tl.store(out_ptr + offs, (x * (1.0 - w)).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_child_ptr + offs, (x * w).to(out_child_ptr.dtype.element_ty), mask=mask)
    else:
        c = tl.load(child_ptr + offs, mask=mask & blending, other=0.0).to(tl.float32)
        out = tl.where(blending, tl.where(a >= 1.0, c, x + a * (c - x)), x)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _compiled():
    mode = interpreting()
    if mode not in _kernels:
        _kernels[mode] = triton.jit(_blend_kernel)
    return _kernels[mode]


@dataclass(frozen=True)
class Layout:
    """The output seen as a (rows, cols) matrix, and whether an element's seed follows its row or its column: a
    Linear's (..., F) output is (numel / F, F), seed by column; a Conv2d's (B, C, H, W) is (B·C, H·W), seed by row
    (``row % C // chunk``). Tiles of about 4,096 elements, a power of two wide."""

    rows: int
    cols: int
    features: int
    seed_by_row: bool

    @property
    def tile(self) -> tuple[int, int]:
        bc = min(_TILE_COLS_ROW if self.seed_by_row else _TILE_COLS, triton.next_power_of_2(max(self.cols, 1)))
        return _TILE // bc, bc

    def grid(self) -> tuple[int, int]:
        br, bc = self.tile
        return triton.cdiv(self.rows, br), triton.cdiv(self.cols, bc)


def _layout(y: torch.Tensor, channel_dim: int) -> Layout:
    if y.dim() == 0:
        raise ValueError("the blend kernel takes a layer's output, not a scalar")
    if channel_dim in (-1, y.dim() - 1):
        features = y.shape[-1]
        return Layout(y.numel() // max(features, 1), features, features, False)
    if channel_dim == 1 and y.dim() >= 2:
        features, inner = y.shape[1], 1
        for d in y.shape[2:]:
            inner *= d
        if inner == 1:  # (B, C) or (B, C, 1, 1): the Linear layout
            return Layout(y.shape[0], features, features, False)
        return Layout(y.shape[0] * features, inner, features, True)
    raise ValueError(f"the blend kernel takes features on the last dim or dim 1, not dim {channel_dim}")


class _Blend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, child, state, alpha, chunk, layout):
        y, child = y.contiguous(), child.contiguous()
        out = torch.empty_like(y)
        # the state may change after this forward (the next step's alpha): the backward keeps what this one read
        state, alpha = state.detach().clone(), alpha.detach().clone()
        _launch(layout, False, chunk, y, child, out, out, state, alpha)
        ctx.save_for_backward(state, alpha)
        ctx.layout, ctx.chunk = layout, chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        state, alpha = ctx.saved_tensors
        grad = grad.contiguous()
        grad_y, grad_child = torch.empty_like(grad), torch.empty_like(grad)
        _launch(ctx.layout, True, ctx.chunk, grad, grad, grad_y, grad_child, state, alpha)
        return grad_y, grad_child, None, None, None, None


def _launch(layout: Layout, backward: bool, chunk: int, x, child, out, out_child, state, alpha) -> None:
    if layout.rows and layout.cols:
        br, bc = layout.tile
        _compiled()[layout.grid()](x, child, out, out_child, state, alpha, layout.rows, layout.cols,
                                   layout.features, chunk, BLEND_BITS=_BLEND_BITS, SEED_BY_ROW=layout.seed_by_row,
                                   BACKWARD=backward, BR=br, BC=bc)


def blend(y: torch.Tensor, child: torch.Tensor, state: torch.Tensor, alpha: torch.Tensor, chunk: int,
          channel_dim: int = -1) -> torch.Tensor:
    """The Triton blend of a layer's output ``y`` with its seeds' child outputs ``child`` (same shape), by the seeds'
    ``state`` codes (uint8) and ``alpha`` (one per seed), seeds owning ``chunk`` consecutive features each."""
    if child.shape != y.shape or child.dtype != y.dtype or child.device != y.device:
        raise ValueError(f"child {tuple(child.shape)} {child.dtype} on {child.device} does not match the layer's "
                         f"output {tuple(y.shape)} {y.dtype} on {y.device}")
    if not triton_blend_available(y):
        raise RuntimeError("the Triton blend runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1); "
                           f"this output is on {y.device}")
    layout = _layout(y, channel_dim)
    if state.numel() * chunk < layout.features or alpha.numel() != state.numel():
        raise ValueError(f"{state.numel()} seeds of {chunk} features do not cover {layout.features} features")
    return _Blend.apply(y, child, state, alpha, chunk, layout)


def blend_reference(y: torch.Tensor, child: torch.Tensor, state: torch.Tensor, alpha: torch.Tensor, chunk: int,
                    channel_dim: int = -1) -> torch.Tensor:
    """The same blend in torch operations, chunk by chunk (what the eager layer does): the kernel's specification."""
    out = y.clone()
    features = y.shape[channel_dim]
    for i, code in enumerate(state.tolist()):
        if Code(code) not in BLEND_CODES:
            continue
        s, e = i * chunk, min((i + 1) * chunk, features)
        a = float(alpha[i])
        yc, cc = y.narrow(channel_dim, s, e - s), child.narrow(channel_dim, s, e - s)
        out.narrow(channel_dim, s, e - s).copy_(cc if a >= 1.0 else yc + a * (cc - yc))
    return out
