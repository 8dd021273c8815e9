"""The starter library: human-designed blueprints, each sized by the seed's chunk width F.

Trainable ones are residual with a zero-initialized last layer, so a freshly grafted child starts as the identity
and the alpha ramp blends in only what it has learned. The ``input_branch`` designs read ``u``, the seed layer's
whole input, and add a hidden layer of new units beside the host's layer that writes into the chunk: capacity a
design that sees only its chunk cannot add (issue #12). ``model_input_branch`` reads ``x0``, the model's input, so
its units skip past every narrow layer before the seed's (Cascade-Correlation's recruited units read the inputs).
"""

from __future__ import annotations

from esper_runtime.blueprints.ir import Blueprint

__all__ = ["STARTER_LIBRARY", "starter_blueprints"]


def _n(id_, op, inputs, **attrs):
    node = {"id": id_, "op": op, "inputs": inputs}
    if attrs:
        node["attrs"] = attrs
    return node


STARTER_LIBRARY = [
    {"name": "residual_mlp", "trainable": True, "tags": ["mlp", "residual"],
     "description": "x + W2·relu(W1·x), hidden 2F",
     "nodes": [_n("h", "linear", ["x"], out={"F": 2}), _n("a", "relu", ["h"]),
               _n("d", "linear", ["a"], out="F", init="zeros"), _n("y", "add", ["x", "d"])], "output": "y"},
    {"name": "wide_residual_mlp", "trainable": True, "tags": ["mlp", "residual", "wide"],
     "description": "x + W2·gelu(W1·x), hidden 4F",
     "nodes": [_n("h", "linear", ["x"], out={"F": 4}), _n("a", "gelu", ["h"]),
               _n("d", "linear", ["a"], out="F", init="zeros"), _n("y", "add", ["x", "d"])], "output": "y"},
    {"name": "deep_residual_mlp", "trainable": True, "tags": ["mlp", "residual", "deep"],
     "description": "two residual MLP blocks of hidden F",
     "nodes": [_n("h1", "linear", ["x"], out="F"), _n("a1", "relu", ["h1"]),
               _n("d1", "linear", ["a1"], out="F", init="zeros"), _n("y1", "add", ["x", "d1"]),
               _n("h2", "linear", ["y1"], out="F"), _n("a2", "relu", ["h2"]),
               _n("d2", "linear", ["a2"], out="F", init="zeros"), _n("y", "add", ["y1", "d2"])], "output": "y"},
    {"name": "bottleneck_adapter", "trainable": True, "tags": ["adapter", "bottleneck", "small"],
     "description": "x + up(relu(down(x))), bottleneck F/4",
     "nodes": [_n("down", "linear", ["x"], out={"F": 0.25}), _n("a", "relu", ["down"]),
               _n("up", "linear", ["a"], out="F", init="zeros"), _n("y", "add", ["x", "up"])], "output": "y"},
    {"name": "low_rank_adapter", "trainable": True, "tags": ["adapter", "low_rank", "small"],
     "description": "x + B·A·x with rank F/8 (LoRA-style, B starts at zero)",
     "nodes": [_n("a", "linear", ["x"], out={"F": 0.125}, bias=0),
               _n("b", "linear", ["a"], out="F", bias=0, init="zeros"), _n("y", "add", ["x", "b"])], "output": "y"},
    {"name": "gated_linear_unit", "trainable": True, "tags": ["gated"],
     "description": "x + (Wa·x) * sigmoid(Wb·x)",
     "nodes": [_n("val", "linear", ["x"], out="F", init="zeros"), _n("gate", "linear", ["x"], out="F"),
               _n("g", "sigmoid", ["gate"]), _n("m", "mul", ["val", "g"]), _n("y", "add", ["x", "m"])],
     "output": "y"},
    {"name": "swiglu", "trainable": True, "tags": ["gated", "mlp"],
     "description": "x + W3·(silu(W1·x) * W2·x), hidden 2F",
     "nodes": [_n("w1", "linear", ["x"], out={"F": 2}), _n("w2", "linear", ["x"], out={"F": 2}),
               _n("s", "silu", ["w1"]), _n("m", "mul", ["s", "w2"]), _n("w3", "linear", ["m"], out="F", init="zeros"),
               _n("y", "add", ["x", "w3"])], "output": "y"},
    {"name": "squeeze_excitation", "trainable": True, "tags": ["gated", "attention_like"],
     "description": "x + x * tanh(W2·relu(W1·x)), squeeze F/4",
     "nodes": [_n("s", "linear", ["x"], out={"F": 0.25}), _n("a", "relu", ["s"]),
               _n("e", "linear", ["a"], out="F", init="zeros"), _n("g", "tanh", ["e"]), _n("m", "mul", ["x", "g"]),
               _n("y", "add", ["x", "m"])], "output": "y"},
    {"name": "depthwise_conv", "trainable": True, "tags": ["conv", "local", "small"],
     "description": "x + conv1d_k3(x) along the features",
     "nodes": [_n("c", "depthwise_conv", ["x"], kernel_size=3, init="zeros"), _n("y", "add", ["x", "c"])],
     "output": "y"},
    {"name": "attention_head", "trainable": True, "tags": ["attention"],
     "description": "x + self-attention over the chunk split into 4 tokens",
     "nodes": [_n("att", "attention", ["x"], tokens=4, init="zeros"), _n("y", "add", ["x", "att"])],
     "output": "y"},
    {"name": "norm_mlp", "trainable": True, "tags": ["mlp", "norm", "residual"],
     "description": "x + W2·gelu(W1·layernorm(x)), hidden 2F",
     "nodes": [_n("n", "layernorm", ["x"]), _n("h", "linear", ["n"], out={"F": 2}), _n("a", "gelu", ["h"]),
               _n("d", "linear", ["a"], out="F", init="zeros"), _n("y", "add", ["x", "d"])], "output": "y"},
    {"name": "input_branch", "trainable": True, "tags": ["branch", "mlp", "residual"],
     "description": "x + W2·relu(W1·u): 2F new units reading the layer's whole input u",
     "nodes": [_n("h", "linear", ["u"], out={"F": 2}), _n("a", "relu", ["h"]),
               _n("d", "linear", ["a"], out="F", init="zeros"), _n("y", "add", ["x", "d"])], "output": "y"},
    {"name": "wide_input_branch", "trainable": True, "tags": ["branch", "mlp", "residual", "wide"],
     "description": "x + W2·relu(W1·u): 4F new units reading the layer's whole input u",
     "nodes": [_n("h", "linear", ["u"], out={"F": 4}), _n("a", "relu", ["h"]),
               _n("d", "linear", ["a"], out="F", init="zeros"), _n("y", "add", ["x", "d"])], "output": "y"},
    {"name": "model_input_branch", "trainable": True, "tags": ["branch", "mlp", "residual", "skip"],
     "description": "x + W2·relu(W1·x0): 2F new units reading the model's input x0 (a skip from the input)",
     "nodes": [_n("h", "linear", ["x0"], out={"F": 2}), _n("a", "relu", ["h"]),
               _n("d", "linear", ["a"], out="F", init="zeros"), _n("y", "add", ["x", "d"])], "output": "y"},
    {"name": "fixed_swish", "trainable": False, "tags": ["fixed_function", "activation"],
     "description": "x + 0.1·silu(x): no parameters",
     "nodes": [_n("s", "silu", ["x"]), _n("k", "scale", ["s"], value=0.1), _n("y", "add", ["x", "k"])],
     "output": "y"},
    {"name": "fixed_tanh", "trainable": False, "tags": ["fixed_function", "activation", "bounded"],
     "description": "x + 0.1·tanh(x): no parameters",
     "nodes": [_n("t", "tanh", ["x"]), _n("k", "scale", ["t"], value=0.1), _n("y", "add", ["x", "k"])],
     "output": "y"},
]


def starter_blueprints() -> list[Blueprint]:
    return [Blueprint.parse(doc) for doc in STARTER_LIBRARY]
