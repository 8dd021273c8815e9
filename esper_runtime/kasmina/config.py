"""KasminaConfig: which layers get seeds, how big a chunk is, and the lifecycle's step counts."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

__all__ = ["KasminaConfig"]


class KasminaConfig(BaseModel):
    model_config = {"extra": "forbid"}

    target_types: list[str] = Field(default=["Linear", "Conv2d"], description="Module classes that get seeds.")
    include: list[str] = Field(default=["*"], description="fnmatch patterns on module paths to wrap.")
    exclude: list[str] = Field(default=[], description="fnmatch patterns on module paths to leave alone.")
    chunk_size: int | None = Field(default=None, ge=1, le=65536, description="Output features per seed.")
    seeds_per_layer: int = Field(default=4, ge=1, le=4096, description="Used when chunk_size is not set.")
    stats_every: int = Field(default=32, ge=1, description="Seeds sample activation statistics every N training steps "
                             "(at least: see samples_per_epoch).")
    samples_per_epoch: int | None = Field(
        default=None, ge=1, description="Statistics samples an epoch needs: the interval grows to steps per epoch ÷ "
        "this when that is longer than stats_every (the epoch's length is the trainer's loader, or the last "
        "epoch's). Unset: every stats_every steps, however long the epoch.")
    measure_latency: bool = Field(default=True, description="Time grafted children's forward on sampled steps (seed "
                                  "health's latency). Off: no wall-clock reading reaches health, telemetry or the "
                                  "controller, so a run is reproducible bit for bit.")
    stats_rows: int = Field(default=256, ge=2, description="Rows (samples, or pixels of conv maps) per statistics sample.")
    correlation_every: int = Field(default=4, ge=1, description="Correlation is estimated on every Nth statistics sample.")
    correlation_samples: int = Field(default=64, ge=2, description="Rows used for the chunk correlation estimate.")
    probe_units: int = Field(default=64, ge=1, description="At most this many random units measure a chunk's growth "
                             "signal: 2F for a chunk of F features when that is fewer, else this many, the signal "
                             "rescaled to 2F (same expectation, a noisier estimate, a quarter of the cost for a "
                             "128-wide chunk).")
    reconstruction_lr: float = Field(default=1e-3, gt=0)
    reconstruction_steps: int = Field(default=50, ge=1, description="TRAINING steps before a seed may be ready.")
    reconstruction_tolerance: float = Field(default=0.05, gt=0,
                                            description="Relative MSE under which the reconstruction test passes.")
    graft_steps: int = Field(default=100, ge=1, description="Length of the alpha ramp, in training steps.")
    graft_ramp: str = Field(default="cosine", pattern="^(linear|cosine)$")
    stabilize_steps: int = Field(default=50, ge=1)
    evaluate_steps: int = Field(default=50, ge=1)
    blend: str = Field(default="auto", pattern="^(auto|eager|triton)$",
                       description="How grafted chunks are blended into the layer's output: triton, one kernel launch "
                       "for all of a layer's seeds (CUDA tensors, or CPU under TRITON_INTERPRET=1); eager, torch "
                       "operations chunk by chunk; auto, triton on CUDA tensors and eager elsewhere.")
    embargo_epochs: int = Field(default=3, ge=0, description="Epochs a culled slot refuses germination.")
    cache_capacity: int = Field(default=32, ge=1, description="Kernels kept loaded (LRU).")

    @model_validator(mode="after")
    def _check(self):
        if not self.target_types:
            raise ValueError("target_types is empty: no layer would get seeds")
        return self
