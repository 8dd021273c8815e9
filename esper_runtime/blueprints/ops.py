"""The fixed table of ops a BlueprintIR may use: shape rule, parameter count and module for each.

Every value in a blueprint graph is a matrix ``(batch, n)``; ops map widths to widths. An op's attrs are checked
against its ``attrs`` spec (name -> (type, lower bound, upper bound)) before anything is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OpSpec", "OPS"]


@dataclass(frozen=True)
class OpSpec:
    arity: int
    attrs: dict[str, tuple[type, float, float]]  # name -> (type, min, max); sizes are resolved ints here
    required: tuple[str, ...]
    out_width: Callable[[list[int], dict], int]  # input widths, attrs -> output width (raise ValueError if invalid)
    params: Callable[[list[int], dict], int]
    build: Callable[[list[int], dict], nn.Module]


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _linear(widths, a):
    layer = nn.Linear(widths[0], a["out"], bias=a.get("bias", 1) == 1)
    if a.get("init") == "zeros":
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return layer


def _same(widths, a):
    return widths[0]


def _pair_same(widths, a):
    if widths[0] != widths[1]:
        raise ValueError(f"inputs have widths {widths[0]} and {widths[1]}")
    return widths[0]


class DepthwiseConv(nn.Module):
    """A 1-D convolution along the feature axis: each output feature mixes its k neighbours, shared weights."""

    def __init__(self, kernel_size: int, zero_init: bool):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=True)
        if zero_init:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x):  # (B, n) -> (B, 1, n) -> (B, n)
        return self.conv(x.unsqueeze(1)).squeeze(1)


class TokenAttention(nn.Module):
    """Self-attention over the feature vector split into ``tokens`` tokens of width n / tokens."""

    def __init__(self, width: int, tokens: int, zero_init: bool):
        super().__init__()
        self.tokens = tokens
        self.d = width // tokens
        self.qkv = nn.Linear(self.d, 3 * self.d)
        self.proj = nn.Linear(self.d, self.d)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b = x.shape[0]
        t = x.reshape(b, self.tokens, self.d)  # (B, n) -> (B, T, d)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.d), dim=-1)  # (B, T, T)
        return self.proj(att @ v).reshape(b, self.tokens * self.d)


def _attention_width(widths, a):
    if widths[0] % a["tokens"]:
        raise ValueError(f"width {widths[0]} is not divisible into {a['tokens']} tokens")
    return widths[0]


_ELEMENTWISE = {
    "relu": torch.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}

_INIT = {"init": (str, 0, 0)}

OPS: dict[str, OpSpec] = {
    "linear": OpSpec(1, {"out": (int, 1, 65536), "bias": (int, 0, 1), **_INIT}, ("out",),
                     lambda w, a: a["out"], lambda w, a: w[0] * a["out"] + (a["out"] if a.get("bias", 1) else 0),
                     _linear),
    "layernorm": OpSpec(1, {}, (), _same, lambda w, a: 2 * w[0], lambda w, a: nn.LayerNorm(w[0])),
    "add": OpSpec(2, {}, (), _pair_same, lambda w, a: 0, lambda w, a: _Lambda(torch.add)),
    "mul": OpSpec(2, {}, (), _pair_same, lambda w, a: 0, lambda w, a: _Lambda(torch.mul)),
    "scale": OpSpec(1, {"value": (float, -100.0, 100.0)}, ("value",), _same, lambda w, a: 0,
                    lambda w, a: _Lambda(lambda x, v=float(a["value"]): x * v)),
    "depthwise_conv": OpSpec(1, {"kernel_size": (int, 1, 31), **_INIT}, ("kernel_size",), _same,
                             lambda w, a: a["kernel_size"] + 1,
                             lambda w, a: DepthwiseConv(a["kernel_size"], a.get("init") == "zeros")),
    "attention": OpSpec(1, {"tokens": (int, 1, 64), **_INIT}, ("tokens",), _attention_width,
                        lambda w, a: (w[0] // a["tokens"]) * 3 * (w[0] // a["tokens"]) + 3 * (w[0] // a["tokens"])
                        + (w[0] // a["tokens"]) ** 2 + (w[0] // a["tokens"]),
                        lambda w, a: TokenAttention(w[0], a["tokens"], a.get("init") == "zeros")),
    **{name: OpSpec(1, {}, (), _same, lambda w, a: 0, lambda w, a, f=fn: _Lambda(f)) for name, fn in _ELEMENTWISE.items()},
}
INITS = {"default", "zeros"}
