"""KasminaLayer: a Linear or Conv2d with seeds on chunks of its output features.

The wrapped module stays inside as ``base_layer`` (peft-style). Each seed owns a contiguous chunk of output
features (Linear: the last dimension; Conv2d: channels) and, once germinated, a child module that maps the chunk to
a chunk of the same width. What a seed does to its chunk depends on its state:

- DORMANT, GERMINATED, CULLED, CANCELLED, ROLLED_BACK, ERROR_RECOVERY: identity (no child on the path).
- TRAINING: identity on the host path; the child learns to denoise the chunk from a detached copy, with its own
  optimizer, so the host's output and gradients are untouched.
- GRAFTING: ``chunk + alpha * (child(chunk) - chunk)`` with alpha ramping 0 -> 1; the child trains on the task loss.
- STABILIZATION, EVALUATING: alpha = 1, child frozen. FINE_TUNING: alpha = 1, child trains on the task loss.
- FOSSILIZED: alpha = 1, child frozen for good.

Only training-mode forwards count as steps. With every seed inactive the forward is the base layer plus a step
counter; activation statistics are sampled every ``sample_every`` steps (``stats_every``, or longer for a long epoch
when ``samples_per_epoch`` is set: sampling is most of what a dormant layer costs).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from esper_runtime.kasmina.config import KasminaConfig
from esper_runtime.kasmina.lifecycle import CHILD_STATES, Code
from esper_runtime.kasmina.state import HEALTH, StateLayout

__all__ = ["KasminaLayer", "ModelInput"]

_PROBE_UNITS = 2  # random ReLU units per chunk feature the growth signal measures (the branch designs' 2F)
_NOISE = 0.1  # denoising strength of the TRAINING objective, relative to the chunk's std
_GRADIENT_STEP = 0.1  # a child that reads the layer's input learns a step of this size (x the chunk's std) downhill


class ModelInput:
    """The wrapped model's current input, shared by its seed layers: children that read ``x0`` (the model's input)
    get it from here. A forward pre-hook on the host sets it; only a (batch, features) tensor counts."""

    def __init__(self):
        self.value: torch.Tensor | None = None
        self.features: int | None = None  # the input width, from the first forward
        self._standard: tuple[int, torch.Tensor] | None = None  # (rows, standardized rows) of this forward's input

    def capture(self, module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        self._standard = None
        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.is_floating_point():
            self.value = x
            self.features = self.features or int(x.shape[1])
        else:
            self.value = None

    def standardized(self, rows: int) -> torch.Tensor:
        """The first ``rows`` rows of this forward's input, standardized per feature: computed once a forward for
        every seed layer that measures new units reading it."""
        if self._standard is None or self._standard[0] != rows:
            self._standard = (rows, _standardize(self.value.detach()[:rows]))
        return self._standard[1]


class KasminaLayer(nn.Module):
    def __init__(self, base_layer: nn.Module, layer_id: int, path: str, config: KasminaConfig):
        super().__init__()
        if isinstance(base_layer, nn.Linear):
            features, self.channel_dim = base_layer.out_features, -1
        elif isinstance(base_layer, nn.Conv2d):
            features, self.channel_dim = base_layer.out_channels, 1
        else:
            raise TypeError(f"{path}: seeds go into nn.Linear or nn.Conv2d, not {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.layer_id = layer_id
        self.path = path
        self.config = config
        self.features = features
        chunk = config.chunk_size or math.ceil(features / config.seeds_per_layer)
        chunk = min(chunk, features)
        self.bounds = [(s, min(s + chunk, features)) for s in range(0, features, chunk)]
        self.num_seeds = len(self.bounds)
        self.uniform_chunk = chunk if features % chunk == 0 else None
        try:
            device = next(base_layer.parameters()).device
        except StopIteration:
            device = None
        for name, tensor in StateLayout.create(self.num_seeds, device).items():
            self.register_buffer(name, tensor)
        # a layer whose last chunk is shorter: each feature's seed and each seed's width, so its statistics are
        # taken for all chunks at once (index_add) rather than chunk by chunk
        seed_of = torch.tensor([i for i, (s, e) in enumerate(self.bounds) for _ in range(s, e)], device=device)
        self.register_buffer("_seed_of_feature", seed_of, persistent=False)
        self.register_buffer("_chunk_widths", torch.tensor([float(e - s) for s, e in self.bounds], device=device),
                             persistent=False)
        self.seeds = nn.ModuleDict()  # str(seed index) -> child module
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_from_buffers())
        # Python mirrors of the hot state, so the forward never reads a tensor to decide what to do.
        self._codes = [Code.DORMANT] * self.num_seeds
        self._active: list[int] = []
        self._phase_steps = [0] * self.num_seeds
        self._optimizers: dict[int, torch.optim.Optimizer] = {}
        self._step = 0
        self._epoch_start_step = 0
        self._samples = 0
        self.sample_every = config.stats_every
        # The first training step after a health reset is always sampled, so an epoch shorter than stats_every
        # steps still tells Tamiyo how every chunk is doing.
        self._sample_due = True
        # Phases that last a fixed number of training steps before the seed signals it is ready.
        self._fixed_phases = {Code.STABILIZATION: config.stabilize_steps, Code.EVALUATING: config.evaluate_steps,
                              Code.FINE_TUNING: config.evaluate_steps}
        self.on_runtime_error: Callable[[KasminaLayer, int, BaseException], None] | None = None
        self.model_input: ModelInput | None = None  # set by Kasmina: the model's input, for children that read it
        self._probes: dict[tuple[str, int], torch.Tensor] = {}

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.training:
            self._step += 1
            if self._sample_due or self._step % self.sample_every == 0:
                self._observe(y)
                if y.requires_grad and self.channel_dim == -1 and y.dim() == 2:
                    self._measure_growth(y, x)
        if not self._active:
            return y
        return self._forward_seeds(y, x)

    def _chunk(self, y: torch.Tensor, i: int) -> torch.Tensor:
        s, e = self.bounds[i]
        return y[..., s:e] if self.channel_dim == -1 else y[:, s:e]

    def _wide_input(self, child: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What a child that reads a wide input gets: the layer's input, or the model's for a design that reads
        ``x0`` (it must be a (batch, features) tensor with this layer's batch)."""
        if getattr(child, "input_source", None) != "model":
            return x
        m = self.model_input.value if self.model_input is not None else None
        if m is None or x.dim() != 2 or m.shape[0] != x.shape[0]:
            raise RuntimeError(f"{self.path}: the child reads the model's input, and this forward has none that "
                               f"fits (a (batch, features) tensor with the layer's batch)")
        return m

    def _run_child(self, child: nn.Module, chunk: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        if getattr(child, "in_features", None) is not None:  # it reads a wide input beside its chunk
            return child(chunk, self._wide_input(child, u))
        if self.channel_dim == -1:
            return child(chunk)
        # (B, c, H, W) -> (B, H, W, c): the child maps channel vectors pixel by pixel
        return child(chunk.movedim(1, -1)).movedim(-1, 1)

    def _forward_seeds(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        outputs: list[tuple[int, float, torch.Tensor]] = []  # (seed, alpha, child output) on the host path
        failed: list[int] = []
        training = self.training
        for i in list(self._active):
            code = self._codes[i]
            chunk = self._chunk(y, i)
            if code == Code.TRAINING:
                if training and torch.is_grad_enabled():
                    if getattr(self.seeds[str(i)], "in_features", None) is not None:
                        self._train_toward_gradient(i, y, chunk, x)
                    else:
                        self._train_reconstruction(i, chunk, x)
                continue  # the host path stays the identity
            child = self.seeds[str(i)]
            sample = training and self.config.measure_latency and self._step % self.sample_every == 0
            try:
                t0 = time.perf_counter() if sample else 0.0
                child_out = self._run_child(child, chunk, x)
                if sample:
                    self.health_accumulator[i, HEALTH["latency_us"]] += (time.perf_counter() - t0) * 1e6
                    self.health_accumulator[i, HEALTH["latency_samples"]] += 1
            except Exception as exc:  # noqa: BLE001 - any kernel failure falls back to the identity path
                if self.on_runtime_error is not None:
                    self.on_runtime_error(self, i, exc)
                failed.append(i)
                continue
            if training and code in self._fixed_phases:
                self._phase_steps[i] += 1
                if self._phase_steps[i] == self._fixed_phases[code]:
                    self.ready[i] = True
            outputs.append((i, self._alpha(i, training), child_out))
        if not outputs:
            return y
        if self._blends_with_triton(y):
            return self._blend_triton(y, outputs, failed)
        out = y.clone()
        for i, alpha, child_out in outputs:
            chunk = self._chunk(y, i)
            self._chunk(out, i).copy_(child_out if alpha >= 1.0 else chunk + alpha * (child_out - chunk))
        return out

    def _blends_with_triton(self, y: torch.Tensor) -> bool:
        mode = self.config.blend
        if mode == "eager" or (mode == "auto" and not y.is_cuda):
            return False
        from esper_runtime.kasmina.blend import triton_blend_available

        if not triton_blend_available(y):
            raise RuntimeError(f"{self.path}: blend 'triton' runs on CUDA tensors (or under TRITON_INTERPRET=1), "
                               f"and this layer's output is on {y.device}")
        return True

    def _blend_triton(self, y: torch.Tensor, outputs: list, failed: list[int]) -> torch.Tensor:
        """One launch for the layer: the child outputs go into their chunks of one tensor, and the kernel reads each
        seed's state and alpha from the state tensors. A seed whose child raised this step still has a blending
        state: its chunk of that tensor is the host's, so it blends to the identity, as on the eager path."""
        from esper_runtime.kasmina.blend import blend

        children = torch.empty_like(y)
        for i, _, child_out in outputs:
            self._chunk(children, i).copy_(child_out)
        for i in failed:
            self._chunk(children, i).copy_(self._chunk(y, i))
        return blend(y, children, self.lifecycle_state, self.alpha_blend, self.bounds[0][1] - self.bounds[0][0],
                     self.channel_dim)

    def _alpha(self, i: int, training: bool) -> float:
        code = self._codes[i]
        if code != Code.GRAFTING:
            return 1.0
        if training:
            self._phase_steps[i] += 1
        progress = min(1.0, self._phase_steps[i] / self.config.graft_steps)
        alpha = progress if self.config.graft_ramp == "linear" else 0.5 - 0.5 * math.cos(math.pi * progress)
        self.alpha_blend[i] = alpha
        if progress >= 1.0:
            self.ready[i] = True
        return alpha

    def _train_reconstruction(self, i: int, chunk: torch.Tensor, x: torch.Tensor) -> None:
        child = self.seeds[str(i)]
        opt = self._optimizers[i]
        target = chunk.detach()
        u = x.detach()  # unused by a child that reads only its chunk
        with torch.enable_grad():
            noisy = target + _NOISE * target.std() * torch.randn_like(target)
            loss = F.mse_loss(self._run_child(child, noisy, u), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self._phase_steps[i] += 1
        if self._phase_steps[i] >= self.config.reconstruction_steps:
            with torch.no_grad():
                err = F.mse_loss(self._run_child(child, target, u), target) / (target.var() + 1e-8)
            self.health_accumulator[i, HEALTH["recon_error"]] = err
            self.ready[i] = bool(torch.isfinite(err)) and float(err) <= self.config.reconstruction_tolerance

    def _train_toward_gradient(self, i: int, y: torch.Tensor, chunk: torch.Tensor, x: torch.Tensor) -> None:
        """TRAINING for a child that reads the layer's input (functional gradient boosting, as in
        Cascade-Correlation and GradMax): once the host's backward reaches this layer, a read-only hook takes the
        loss gradient of the chunk, and the child's own optimizer moves ``child(chunk, u) - chunk`` toward a small
        step down that gradient. The hook returns nothing, so the host's gradients are untouched."""
        if not y.requires_grad:
            return
        child, opt = self.seeds[str(i)], self._optimizers[i]
        base = chunk.detach()
        try:
            u = self._wide_input(child, x).detach()
        except RuntimeError as exc:
            if self.on_runtime_error is not None:
                self.on_runtime_error(self, i, exc)
            return
        start, end = self.bounds[i]

        def fit(grad: torch.Tensor) -> None:
            g = grad[..., start:end].detach()
            target = -g * (_GRADIENT_STEP * base.std() / (g.std() + 1e-12))
            with torch.enable_grad():
                delta = child(base, u) - base
                loss = F.mse_loss(delta, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            self._phase_steps[i] += 1
            if self._phase_steps[i] >= self.config.reconstruction_steps:
                cos = F.cosine_similarity(delta.detach().flatten(), target.flatten(), dim=0)
                self.health_accumulator[i, HEALTH["recon_error"]] = 1 - cos  # 0: it points straight downhill
                self.ready[i] = bool(torch.isfinite(cos)) and float(cos) > 0

        y.register_hook(fit)

    # ------------------------------------------------------------------ stats
    def _probe(self, source: str, z: torch.Tensor) -> torch.Tensor:
        """Fixed random ReLU units over the standardized input ``z``: what new units reading it would compute."""
        key = (source, z.shape[1])
        proj = self._probes.get(key)
        if proj is None or proj.device != z.device:  # its own generator: measuring never moves torch's global RNG
            gen = torch.Generator().manual_seed(7919 * (self.layer_id + 1) + (source == "model"))
            units = min(_PROBE_UNITS * max(e - s for s, e in self.bounds), self.config.probe_units)
            proj = torch.randn(z.shape[1], units, generator=gen) / math.sqrt(z.shape[1])
            self._probes[key] = proj = proj.to(device=z.device, dtype=torch.float32)
        return torch.relu(z @ proj)

    def _measure_growth(self, y: torch.Tensor, x: torch.Tensor) -> None:
        """The growth signal (GradMax, Evci et al. 2022; TINY's expressivity bottleneck): how fast the loss would
        fall through new units reading this layer's input, or the model's, and writing each chunk. With 2F random
        ReLU units ``phi`` over that input (the size of the branch designs for a chunk of F features), it is the
        norm of the loss gradient of their zero-initialized output weights, ``||phi^T g_chunk||``, taken when the
        backward reaches this layer (a read-only hook: the host's gradients are untouched). Accumulated per seed on
        the sampled steps."""
        rows = self.config.stats_rows
        with torch.no_grad():
            probes = {}
            model_input = self.model_input
            m = model_input.value if model_input is not None else None
            if m is None or m.shape[0] != x.shape[0]:
                probes["layer"] = self._probe("layer", _standardize(x.detach()[:rows]))
            elif m is x:  # the layer reads the model's input: one signal, its standardization shared
                probes["layer"] = self._probe("layer", model_input.standardized(rows))
            else:
                probes["model"] = self._probe("model", model_input.standardized(rows))
                if not self._model_decides():  # the layer's own input is at least as wide: both are measured
                    probes["layer"] = self._probe("layer", _standardize(x.detach()[:rows]))

        def measure(grad: torch.Tensor) -> None:
            with torch.no_grad():
                g = _first_rows(grad, rows)
                acc = self.health_accumulator
                for source, phi in probes.items():
                    # (units, features): a chunk of F features is measured with 2F units, or probe_units of them
                    # scaled up to 2F's expected sum when 2F is more
                    c = (phi.t() @ g).pow_(2)
                    if self.uniform_chunk is not None:  # every chunk uses all the units: one reduction
                        scale = _PROBE_UNITS * self.uniform_chunk / c.shape[0]
                        per_seed = c.view(c.shape[0], self.num_seeds, self.uniform_chunk).sum(dim=(0, 2))
                        per_seed = (per_seed * scale).sqrt_() if scale != 1 else per_seed.sqrt_()
                    else:  # each chunk sums its own first units, scaled to 2F: one weighted reduction
                        per_feature = (c * self._ragged_weights(c.shape[0], c.device)).sum(0)
                        per_seed = self._per_seed(per_feature).sqrt_()
                    acc.select(1, HEALTH[f"growth_{source}"]).add_(per_seed)
                acc.select(1, HEALTH["growth_samples"]).add_(1)

        y.register_hook(measure)

    def _probe_units(self, available: int) -> list[tuple[int, int, int]]:
        """(start, end, units) per chunk: 2F units for a chunk of F features, at most ``available``."""
        return [(s, e, min(_PROBE_UNITS * (e - s), available)) for s, e in self.bounds]

    def _ragged_weights(self, available: int, device) -> torch.Tensor:
        """(units, features): for each chunk's features, its first units weighted ``2F / units`` (the rescaling to
        2F's expectation), the rest 0 — the per-chunk sums of ``_probe_units`` as one product."""
        key = ("weights", available)
        w = self._probes.get(key)
        if w is None or w.device != torch.device(device):
            w = torch.zeros(available, self.features)
            for s, e, u in self._probe_units(available):
                w[:u, s:e] = _PROBE_UNITS * (e - s) / u
            self._probes[key] = w = w.to(device)
        return w

    def _per_seed(self, per_feature: torch.Tensor) -> torch.Tensor:
        """Sum a (features,) tensor over each seed's chunk."""
        return torch.zeros(self.num_seeds, device=per_feature.device, dtype=per_feature.dtype).index_add_(
            0, self._seed_of_feature, per_feature)

    @torch.no_grad()
    def _observe(self, y: torch.Tensor) -> None:
        """Accumulate chunk statistics from a sample of at most ``stats_rows`` rows of this step's output."""
        self._sample_due = False
        if self.channel_dim == -1 and y.dim() == 2:  # (batch, features): the rows as they are (no_grad: no graph)
            rows = _first_rows(y, self.config.stats_rows)
        else:
            if self.channel_dim == 1 and y.dim() == 4:
                # (B, C, H, W): a strided grid of pixels, so only the sample is copied
                b, _, h, w = y.shape
                stride = max(1, math.ceil(math.sqrt(b * h * w / self.config.stats_rows)))
                y = y[:, :, ::stride, ::stride]
            rows = _first_rows(y.movedim(self.channel_dim, -1).reshape(-1, self.features), self.config.stats_rows)
        if rows.shape[0] < 2:
            return
        self._samples += 1
        with_corr = self._samples % self.config.correlation_every == 1 or self.config.correlation_every == 1
        corr_rows = self.config.correlation_samples if with_corr else 0
        acc = self.health_accumulator  # views of its columns updated in place: no copy back per statistic
        acc.select(1, HEALTH["samples"]).add_(1)
        acc.narrow(1, HEALTH["variance"], 2).add_(self._chunk_means(rows))
        if with_corr:
            acc.select(1, HEALTH["correlation"]).add_(self._correlation(rows[:corr_rows]))
            acc.select(1, HEALTH["corr_samples"]).add_(1)

    def _chunk_means(self, rows: torch.Tensor) -> torch.Tensor:
        """(seeds, 2): each chunk's mean unit variance and dead-unit ratio (a unit that never fires under a ReLU)
        over ``rows``. Per feature first, then every chunk's mean at once (a view of equal chunks, or each
        feature's sum into its seed): a sample is a handful of operations, whatever the chunks' widths."""
        n = rows.shape[0]
        mean = rows.mean(0)
        var = (rows * rows).mean(0).sub_(mean.square_()).clamp_min_(0).mul_(n / (n - 1))  # unbiased, raw moments
        per_feature = torch.stack((var, rows.amax(0).le_(0)), dim=1)  # (features, 2)
        if self.uniform_chunk is not None:
            return per_feature.view(self.num_seeds, self.uniform_chunk, 2).mean(1)
        return torch.zeros(self.num_seeds, 2, device=rows.device).index_add_(
            0, self._seed_of_feature, per_feature).div_(self._chunk_widths.unsqueeze(1))

    def _correlation(self, rows: torch.Tensor) -> torch.Tensor:
        """(seeds,): mean |correlation| between the units of each chunk over ``rows`` (0 for a 1-wide chunk)."""
        z = _standardize(rows)
        if self.uniform_chunk is not None:
            c = self.uniform_chunk
            if c == 1:
                return torch.zeros(self.num_seeds, device=rows.device)
            z = z.view(z.shape[0], self.num_seeds, c)
            corr = torch.bmm(z.permute(1, 2, 0), z.permute(1, 0, 2)).abs_()  # (seeds, c, c)
            off = corr.sum(dim=(-1, -2)) - corr.diagonal(dim1=-2, dim2=-1).sum(-1)
            return off / (max(z.shape[0] - 1, 1) * c * (c - 1))
        corr = (z.t() @ z).abs_() / max(z.shape[0] - 1, 1)  # (features, features)
        same = self._seed_of_feature.unsqueeze(0) == self._seed_of_feature.unsqueeze(1)
        off = self._per_seed((corr * same).sum(1) - corr.diagonal())  # within a chunk, off the diagonal
        widths = self._chunk_widths
        return torch.where(widths > 1, off / (widths * (widths - 1)).clamp_min(1), torch.zeros_like(off))

    @torch.no_grad()
    def growth_signals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per seed, the growth signal Tamiyo ranks locations by, and whether it is for units reading the model's
        input. New units read the wider of the layer's input and the model's: the layer's input is computed from
        the model's, so when it is narrower it has lost what the narrow layers before it dropped, and when it is at
        least as wide it offers deeper features. The signal is the gradient norm for that input times the chunk's
        spread, so it does not depend on how the host splits a scale between layers (halving a layer's outputs and
        doubling the next layer's weights doubles the gradient)."""
        signal, from_model = self._signals(self.health_accumulator.detach().cpu().tolist())
        return torch.tensor(signal, dtype=torch.float32), torch.tensor(from_model, dtype=torch.bool)

    def _model_decides(self) -> bool:
        """Whether new units would read the model's input rather than the layer's: the model's is wider. Then the
        layer's own input is not measured (its ``growth_layer`` stays 0): it would not change the signal."""
        model_width = self.model_input.features if self.model_input is not None else None
        return self.channel_dim == -1 and model_width is not None and model_width > self.base_layer.in_features

    def _signals(self, rows: list[list[float]]) -> tuple[list[float], list[bool]]:
        """``growth_signals`` from the accumulator's rows as Python numbers (float64, as the tensor arithmetic was;
        a layer has tens of seeds, and a dozen tensor operations on them cost more than the arithmetic)."""
        wider = self._model_decides()
        signal, from_model = [], []
        for row in rows:
            n, grow_n = max(row[HEALTH["samples"]], 1.0), max(row[HEALTH["growth_samples"]], 1.0)
            spread = math.sqrt(max(row[HEALTH["variance"]] / n, 0.0))
            model_signal = row[HEALTH["growth_model"]] / grow_n
            use_model = wider and model_signal > 0
            signal.append(spread * (model_signal if use_model else row[HEALTH["growth_layer"]] / grow_n))
            from_model.append(use_model)
        return signal, from_model

    def health(self) -> list[dict]:
        """Per-seed means over the samples since the last reset. The accumulator is read into Python numbers once:
        a float() of a tensor element per field and seed was most of what publishing telemetry cost an epoch."""
        rows = self.health_accumulator.detach().cpu().tolist()
        signal, from_model = self._signals(rows)
        signal = torch.tensor(signal, dtype=torch.float32).tolist()  # the float32 values growth_signals gives
        out = []
        for i, row in enumerate(rows):
            n = max(row[HEALTH["samples"]], 1.0)
            corr_n = max(row[HEALTH["corr_samples"]], 1.0)
            lat_n = row[HEALTH["latency_samples"]]
            grow_n = max(row[HEALTH["growth_samples"]], 1.0)
            out.append({
                "chunk_variance": row[HEALTH["variance"]] / n,
                "dead_node_ratio": row[HEALTH["dead"]] / n,
                "avg_correlation": row[HEALTH["correlation"]] / corr_n,
                "exec_latency_us": row[HEALTH["latency_us"]] / lat_n if lat_n else 0.0,
                "samples": int(row[HEALTH["samples"]]),
                "growth_layer": row[HEALTH["growth_layer"]] / grow_n,
                "growth_model": row[HEALTH["growth_model"]] / grow_n,
                "growth_signal": signal[i],
                "growth_source": "model" if from_model[i] else "layer",
            })
        return out

    def end_epoch_latency(self) -> None:
        """Move the epoch's mean child latency into the per-seed ``exec_latency_us`` state."""
        acc = self.health_accumulator
        n = acc[:, HEALTH["latency_samples"]]
        mean = torch.where(n > 0, acc[:, HEALTH["latency_us"]] / n.clamp_min(1), torch.zeros_like(n))
        self.exec_latency_us.copy_(mean.round().to(self.exec_latency_us.dtype))

    def expect_epoch_steps(self, steps: int) -> None:
        """Sample ``samples_per_epoch`` times in an epoch of ``steps`` training steps (never more often than
        ``stats_every``). A count of steps, not a clock, so a run samples the same steps on any machine."""
        wanted = self.config.samples_per_epoch
        if wanted and steps > 0:
            self.sample_every = max(self.config.stats_every, steps // wanted)

    def reset_health(self) -> None:
        steps, self._epoch_start_step = self._step - self._epoch_start_step, self._step
        if steps:  # the epoch just ended is the best guess for the next one
            self.expect_epoch_steps(steps)
        recon = self.health_accumulator[:, HEALTH["recon_error"]].clone()
        self.health_accumulator.zero_()
        self.health_accumulator[:, HEALTH["recon_error"]] = recon
        self._sample_due = True

    # ------------------------------------------------------------------ state changes (called by the controller)
    def set_state(self, i: int, code: Code, epoch: int) -> None:
        self._codes[i] = code
        self.lifecycle_state[i] = int(code)
        self.last_update_epoch[i] = epoch
        self.ready[i] = False
        self._phase_steps[i] = 0
        child = self.seeds[str(i)] if str(i) in self.seeds else None
        if code == Code.GRAFTING:
            self.alpha_blend[i] = 0.0
        elif code in CHILD_STATES:
            self.alpha_blend[i] = 1.0
        else:
            self.alpha_blend[i] = 0.0
        if child is not None:
            trainable = code in (Code.GRAFTING, Code.FINE_TUNING)
            for p in child.parameters():
                p.requires_grad_(trainable or code == Code.TRAINING)
        if code != Code.TRAINING:
            self._optimizers.pop(i, None)
        self._refresh_active()

    def attach(self, i: int, child: nn.Module, kernel_id: int, trainable: bool) -> None:
        ref = self.base_layer.weight
        child = child.to(device=ref.device, dtype=ref.dtype)
        self.seeds[str(i)] = child
        self.active_kernel_id[i] = kernel_id
        if trainable:
            self._optimizers[i] = torch.optim.Adam(child.parameters(), lr=self.config.reconstruction_lr)

    def detach_child(self, i: int) -> None:
        if str(i) in self.seeds:
            del self.seeds[str(i)]
        self._optimizers.pop(i, None)
        self.active_kernel_id[i] = 0

    def _refresh_active(self) -> None:
        self._active = [i for i, c in enumerate(self._codes) if c in CHILD_STATES]

    def _sync_from_buffers(self) -> None:
        self._codes = [Code(int(c)) for c in self.lifecycle_state.tolist()]
        self._refresh_active()

    def extra_repr(self) -> str:
        return f"layer_id={self.layer_id}, path={self.path!r}, seeds={self.num_seeds}, chunk={self.bounds[0][1]}"


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance over dim 0, from raw moments (torch's var over dim 0 is ~10x slower on CPU)."""
    n = x.shape[0]
    mean = x.mean(0)
    var = ((x * x).mean(0) - mean * mean).clamp_min_(0) * (n / max(n - 1, 1))
    return mean, var


def _first_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """At most the first ``rows`` rows of ``t``, as float32: no operation where there is nothing to do (a sampled
    step is a few dozen small operations, and each costs ~10 us between the host's kernels)."""
    if t.shape[0] > rows:
        t = t[:rows]
    return t if t.dtype == torch.float32 else t.float()


def _standardize(u: torch.Tensor) -> torch.Tensor:
    """Each feature (column) of ``u`` to mean 0 and standard deviation 1 (features that do not vary to 0)."""
    u = u.float()
    mean, var = _moments(u)
    return (u - mean) / (var.sqrt() + 1e-6)
