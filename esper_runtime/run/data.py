"""A run's data: files checked cell by cell before anything trains, factories and built-in tasks, as DataLoaders.

Files (CSV with a header, parquet, npz) are read whole and refused with the file, line and column of the first bad
cell: a missing target column, a non-numeric or empty cell, NaN or infinity, a label that is not a class. Features
are standardized with the training split's statistics. A factory returns torch Datasets, which may be larger than
memory; their batches are checked as they are drawn (Tolaria refuses a batch with NaN or infinity, or a label out
of the model's range, naming the batch).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler, TensorDataset

from esper_runtime.run.config import DataConfig
from esper_runtime.run.exceptions import DataError

__all__ = ["DataError", "RunData", "load_data", "make_loader", "import_factory"]


@dataclass
class RunData:
    train: Dataset
    val: Dataset
    in_features: int | None  # None: a factory's datasets, known from the first batch
    n_outputs: int | None  # classes (classification) or target columns (regression); None: from the model
    description: str
    classes: list[str] = field(default_factory=list)  # class names when the labels were strings
    checked: bool = True  # every value was checked finite on load (files, built-ins)
    scaling: dict | None = None  # {"mean": [...], "std": [...]}: how raw features were standardized


def import_factory(path: str, what: str):
    """``package.module:function`` -> the function, or a DataError/ConfigError-style message naming the problem."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix; say which
        raise DataError(f"{what} {path!r}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise DataError(f"{what} {path!r}: {module_name} has no callable {attr!r}")
    return fn


def call_factory(fn, **offered):
    """Call ``fn`` with the keyword arguments it accepts among ``offered``."""
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return fn(**offered)
    return fn(**{k: v for k, v in offered.items() if k in params})


# ----------------------------------------------------------------------------- files
def _read_frame(path: Path):
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: unsupported format {suffix or '(none)'}; use .csv, .parquet or .npz")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds; the message names the file
        raise DataError(f"{path}: cannot be read: {type(exc).__name__}: {exc}") from None
    if frame.shape[0] == 0:
        raise DataError(f"{path}: no rows")
    return frame


def _numeric(path: Path, frame, column: str) -> np.ndarray:
    """One column as float64, refusing the first cell that is not a finite number (CSV line numbers count the
    header as line 1)."""
    import pandas as pd

    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        cell = raw.iloc[row]
        text = str(cell).strip()
        what = ("is empty" if text == "" else "is NaN" if text.lower() in ("nan", "na", "none", "null")
                else "is infinite" if np.isinf(values[row]) else f"{text[:40]!r} is not a number")
        where = f"line {row + 2}" if path.suffix.lower() == ".csv" else f"row {row}"
        raise DataError(f"{path} {where}, column {column!r}: {what} (every feature and target must be a finite "
                        f"number)")
    return values


def _read_table(path: Path, cfg: DataConfig, task: str):
    """(features float32 (N, F), raw targets, feature names, target texts for class names or None)."""
    if path.suffix.lower() == ".npz":
        return _read_npz(path, cfg, task)
    frame = _read_frame(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if cfg.target not in columns:
        raise DataError(f"{path}: no target column {cfg.target!r} (columns: {', '.join(columns[:20])})")
    features = cfg.features or [c for c in columns if c != cfg.target]
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"{path}: no feature column {missing[0]!r} (columns: {', '.join(columns[:20])})")
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {cfg.target!r}")
    x = np.stack([_numeric(path, frame, c) for c in features], axis=1).astype(np.float32)
    target = frame[cfg.target]
    if task == "regression":
        return x, _numeric(path, frame, cfg.target), features, None
    texts = [str(v).strip() for v in target.tolist()]
    return x, None, features, texts


def _read_npz(path: Path, cfg: DataConfig, task: str):
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot be read as .npz: {type(exc).__name__}: {exc}") from None
    x_name = (cfg.features or ["x"])[0]
    for name in (x_name, cfg.target):
        if name not in arrays.files:
            raise DataError(f"{path}: no array {name!r} (arrays: {', '.join(arrays.files)}); set data.target "
                            f"(and data.features: [name] for the inputs)")
    try:
        x = np.asarray(arrays[x_name], dtype=np.float64)
        y = np.asarray(arrays[cfg.target])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: arrays must be numeric: {exc}") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: {x_name!r} must be (rows, features) and {cfg.target!r} have as many rows "
                        f"({x.shape} vs {y.shape})")
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}: {x_name}[{row}, {col}] is {x[row, col]} (every feature must be a finite number)")
    names = [f"{x_name}[{i}]" for i in range(x.shape[1])]
    if task == "regression":
        yf = np.asarray(y, dtype=np.float64)
        if not np.isfinite(yf).all():
            row = int(np.argwhere(~np.isfinite(yf))[0][0])
            raise DataError(f"{path}: {cfg.target}[{row}] is not finite")
        return x.astype(np.float32), yf, names, None
    return x.astype(np.float32), None, names, [str(v.item() if hasattr(v, "item") else v) for v in y]


def _labels(path: Path, texts: list[str], classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Class labels: non-negative integers stay themselves; any other text is a class name, numbered in sorted
    order of the training split's names (``classes``)."""
    def as_int(t: str):
        try:
            f = float(t)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None

    ints = [as_int(t) for t in texts]
    where = lambda row: f"line {row + 2}" if path.suffix.lower() == ".csv" else f"row {row}"  # noqa: E731
    if classes is None and all(i is not None for i in ints):
        for row, i in enumerate(ints):
            if i < 0:
                raise DataError(f"{path} {where(row)}: label {texts[row]!r} is out of range (classes are numbered "
                                f"from 0)")
        return np.asarray(ints, dtype=np.int64), []
    if classes is not None and not classes:  # the training labels were integers: these must be too
        for row, i in enumerate(ints):
            if i is None or i < 0:
                raise DataError(f"{path} {where(row)}: label {texts[row]!r} is not a class (the training labels "
                                f"are integers from 0)")
        return np.asarray(ints, dtype=np.int64), []
    for row, t in enumerate(texts):
        if t == "" or t.lower() == "nan":
            raise DataError(f"{path} {where(row)}: the label is empty or NaN")
    names = classes if classes is not None else sorted(set(texts))
    index = {n: i for i, n in enumerate(names)}
    for row, t in enumerate(texts):
        if t not in index:
            raise DataError(f"{path} {where(row)}: label {t!r} is not one of the training labels")
    return np.asarray([index[t] for t in texts], dtype=np.int64), names


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = n - max(1, int(round(fraction * n)))
    if cut < 1:
        raise DataError(f"{n} rows cannot be split into training and validation")
    return order[:cut], order[cut:]


def _targets(path: Path, yr, texts, task: str, classes: list[str] | None):
    if task == "regression":
        return yr.astype(np.float32)[:, None], []
    return _labels(path, texts, classes)


def _from_files(cfg: DataConfig, task: str) -> RunData:
    # Targets are checked before any split, so an error names the file's own line.
    x, yr, names, texts = _read_table(cfg.train, cfg, task)
    y, classes = _targets(cfg.train, yr, texts, task, None)
    if cfg.val is not None:
        vx, vyr, vnames, vtexts = _read_table(cfg.val, cfg, task)
        if vnames != names:
            raise DataError(f"{cfg.val}: feature columns {vnames[:10]} differ from {cfg.train}'s {names[:10]}")
        vy, _ = _targets(cfg.val, vyr, vtexts, task, classes)
    else:
        tr, va = _split(x.shape[0], cfg.val_fraction, cfg.split_seed)
        x, vx, y, vy = x[tr], x[va], y[tr], y[va]
    if task == "regression":
        n_out = 1
    else:
        n_out = len(classes) if classes else int(max(y.max(), vy.max())) + 1
    source = f"{cfg.train}" + (f" / {cfg.val}" if cfg.val else f" (validation: {cfg.val_fraction:.0%} held out)")
    return _tensors(x, y, vx, vy, cfg.standardize, n_out, f"{source}: {len(y)} train, {len(vy)} validation rows, "
                    f"{x.shape[1]} features", classes)


def _tensors(x, y, vx, vy, standardize: bool, n_out: int, description: str, classes=()) -> RunData:
    scaling = None
    if standardize:
        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 0, std, 1.0)
        x, vx = (x - mean) / std, (vx - mean) / std
        scaling = {"mean": mean.astype(float).tolist(), "std": std.astype(float).tolist()}
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a))  # noqa: E731
    return RunData(TensorDataset(as_t(x.astype(np.float32)), as_t(y)),
                   TensorDataset(as_t(vx.astype(np.float32)), as_t(vy)),
                   int(x.shape[1]), n_out, description, list(classes), scaling=scaling)


def _builtin(cfg: DataConfig, task: str) -> RunData:
    if task != "classification":
        raise DataError(f"data.builtin {cfg.builtin!r} is a classification task")
    if cfg.builtin.startswith("two_spirals"):
        from esper_runtime.demo.tasks import two_spirals

        (tx, ty), (vx, vy) = two_spirals(distractor=cfg.builtin.endswith("distractor"))
        return RunData(TensorDataset(tx, ty), TensorDataset(vx, vy), int(tx.shape[1]), 2,
                       f"two spirals ({len(ty)} train, {len(vy)} validation)")
    from sklearn.datasets import load_digits

    digits = load_digits()
    tr, va = _split(len(digits.target), cfg.val_fraction, cfg.split_seed)
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    return _tensors(x[tr], y[tr], x[va], y[va], cfg.standardize, 10,
                    f"scikit-learn digits ({len(tr)} train, {len(va)} validation, 64 features, 10 classes)")


def _from_factory(cfg: DataConfig) -> RunData:
    fn = import_factory(cfg.factory, "data.factory")
    try:
        made = fn()
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"data.factory {cfg.factory!r} failed: {type(exc).__name__}: {exc}") from None
    if isinstance(made, dict):
        made = (made.get("train"), made.get("val"))
    if not (isinstance(made, (tuple, list)) and len(made) == 2
            and all(isinstance(d, Dataset) or hasattr(d, "__getitem__") for d in made)):
        raise DataError(f"data.factory {cfg.factory!r} must return (train, val) torch Datasets, "
                        f"got {type(made).__name__}")
    return RunData(made[0], made[1], None, None, f"{cfg.factory}()", checked=False)


def load_data(cfg: DataConfig, task: str) -> RunData:
    """The run's two splits, checked; raises DataError naming the file, line and column of the first problem."""
    if cfg.builtin is not None:
        return _builtin(cfg, task)
    if cfg.factory is not None:
        return _from_factory(cfg)
    return _from_files(cfg, task)


class Shuffled(Sampler):
    """One permutation of the rows per epoch from the run's generator, and nothing else drawn from it (torch's
    RandomSampler draws a second permutation at the end of each pass), so a run's batches follow from its seed."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(data, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                num_workers: int = 0) -> DataLoader:
    """Mini-batches of a Dataset (or a ``(x, y)`` pair of tensors). In-memory tensors are sliced a batch at a time
    rather than gathered row by row."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorDataset(*data)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    sampler = Shuffled(len(data), generator) if shuffle else SequentialSampler(data)
    # The loader's own generator only seeds worker processes; without one it would draw from torch's global RNG
    # every epoch, which seeds use (a TRAINING child's noise): runs would differ by how they load data.
    own = torch.Generator().manual_seed(0)
    if isinstance(data, TensorDataset):
        return DataLoader(data, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None,
                          num_workers=num_workers, generator=own)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers, generator=own)
