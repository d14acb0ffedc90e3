"""The compression options: the budget, the search space (the candidate blocks as data) and the training
settings. Plain data, validated at load, so that a configuration is checked without importing torch."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import ConfigError, ModelError
from ..units import parse_count

# Where a latency budget's table can come from (``pipeline.stages.latency.LATENCY_SOURCES`` has a row for each).
LATENCY_SOURCES = ("host", "board", "roofline")

# The built-in families. A grid maps each argument of the family's builder (besides cin, cout, stride) to
# the values to try; "basic" narrows the teacher's own basic block to width_fraction x cout inside.
DEFAULT_GRIDS: dict[str, dict[str, tuple]] = {
    "inverted_residual": {"expansion": (1, 2, 4, 6), "kernel": (3, 5), "depth": (1, 2)},
    "separable": {"kernel": (3, 5)},
    "basic": {"width_fraction": (0.5, 0.25)},
    # a teacher's 1x1-only block (MobileNetV2's last 1x1 to 1280 channels, most of its parameters), factored through
    # rank_fraction x min(cin, cout) channels
    "low_rank": {"rank_fraction": (0.25, 0.125)},
}
FRACTIONS = ("width_fraction", "rank_fraction")


def _valid_value(argument: str, value: Any, builtin: bool) -> bool:
    if not builtin:  # a user's factory checks its own arguments
        return value is not None
    if isinstance(value, bool):
        return False
    if argument in FRACTIONS:
        return isinstance(value, (int, float)) and 0 < value <= 1
    return isinstance(value, int) and value >= 1


def _grid(where: str, grid: Any, default: dict[str, tuple] | None) -> dict[str, tuple]:
    """A validated grid; a built-in family's (``default`` given) takes its defaults for arguments left out."""
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: bad value {grid!r}, expected a mapping of argument to values (or null to drop it)")
    builtin = default is not None
    if builtin and set(grid) - set(default):
        raise ConfigError(f"{where}: unknown argument(s) {', '.join(sorted(set(grid) - set(default)))}; "
                          f"valid: {', '.join(default)}")
    checked = dict(default or {})
    for argument, values in grid.items():
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        if not values or not all(_valid_value(argument, v, builtin) for v in values):
            expected = ("fractions in (0, 1]" if argument in FRACTIONS else "positive integers") if builtin \
                else "values"
            raise ConfigError(f"{where}.{argument}: bad value {list(values)!r}, expected a non-empty list of {expected}")
        checked[argument] = values
    return checked


@dataclass(frozen=True)
class SearchSpace:
    """The student blocks tried for every teacher block, besides the teacher's own block.

    Every combination of a family's grid is a candidate; a family set to None (YAML ``null``) is left out.
    ``custom`` adds a user's blocks, ``{"package.module:factory": {argument: [values]}}``: the factory is
    called as ``factory(cin=..., cout=..., stride=..., **values)`` and returns an ``nn.Module`` mapping that
    input to that output shape, or None where it has no such block; ``student.json`` names it to rebuild it.
    """

    identity: bool = True  # where a block keeps its input's shape
    inverted_residual: dict[str, tuple] | None = field(default_factory=lambda: DEFAULT_GRIDS["inverted_residual"])
    separable: dict[str, tuple] | None = field(default_factory=lambda: DEFAULT_GRIDS["separable"])
    basic: dict[str, tuple] | None = field(default_factory=lambda: DEFAULT_GRIDS["basic"])  # teacher basic blocks
    low_rank: dict[str, tuple] | None = field(default_factory=lambda: DEFAULT_GRIDS["low_rank"])  # teacher 1x1 blocks
    custom: dict[str, dict[str, tuple]] = field(default_factory=dict)

    def __post_init__(self):
        where = "compress.search_space"
        if not isinstance(self.identity, bool):
            raise ConfigError(f"{where}.identity: bad value {self.identity!r}, expected true or false")
        for family, default in DEFAULT_GRIDS.items():
            if getattr(self, family) is not None:
                object.__setattr__(self, family, _grid(f"{where}.{family}", getattr(self, family), default))
        if not isinstance(self.custom, dict):
            raise ConfigError(f"{where}.custom: bad value {self.custom!r}, expected a mapping of "
                              "package.module:factory to its grid")
        custom = {}
        for ref, grid in self.custom.items():
            if ":" not in str(ref):
                raise ConfigError(f"{where}.custom: bad key {ref!r}, expected package.module:factory")
            from ..torchmodel import import_callable  # the user's block module: checked here, imported only for it

            try:
                import_callable(ref)
            except ModelError as exc:
                raise ConfigError(f"{where}.custom: {exc}") from exc
            custom[ref] = _grid(f"{where}.custom.{ref}", grid or {}, None)
        object.__setattr__(self, "custom", custom)


@dataclass(frozen=True)
class Budget:
    max_flops: int | None = None  # a count such as 20000000 or "20M"
    max_params: int | None = None
    flops_ratio: float | None = None  # of the teacher's
    params_ratio: float | None = None
    max_latency_ms: float | None = None  # per image, as the compress step's latency table measures it

    def __post_init__(self):
        if self.max_latency_ms is not None and (isinstance(self.max_latency_ms, bool) or
                                                not isinstance(self.max_latency_ms, (int, float)) or
                                                self.max_latency_ms <= 0):
            raise ConfigError(f"max_latency_ms: bad value {self.max_latency_ms!r}, expected a positive number of ms")
        for name in ("max_flops", "max_params"):
            value = getattr(self, name)
            if value is not None:
                parsed = parse_count(value)
                if parsed is None:
                    raise ConfigError(f"{name}: bad value {value!r}, expected a positive count such as 300k or 20M")
                object.__setattr__(self, name, parsed)
        for name in ("flops_ratio", "params_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ConfigError(f"{name}: bad value {value!r}, expected a ratio in (0, 1]")

    def with_defaults(self, max_flops: int | None, max_params: int | None) -> "Budget":
        """Fill the unset absolute limits (e.g. from a target profile)."""
        return replace(self, max_flops=self.max_flops or max_flops, max_params=self.max_params or max_params)

    def limits(self, teacher_flops: int, teacher_params: int) -> tuple[int | None, int | None]:
        flops = [v for v in (self.max_flops, self.flops_ratio and int(self.flops_ratio * teacher_flops)) if v]
        params = [v for v in (self.max_params, self.params_ratio and int(self.params_ratio * teacher_params)) if v]
        return (min(flops) if flops else None), (min(params) if params else None)


@dataclass(frozen=True)
class CompressOptions:
    enabled: bool = True  # `pipeline run --no-compress` keeps the model as it is
    budget: Budget = field(default_factory=Budget)  # unset limits come from the target profiles
    boundaries: tuple[str, ...] | None = None  # names in the teacher's `features` that start a block
    frozen: tuple[str, ...] = ()  # blocks kept as they are
    search_space: SearchSpace = field(default_factory=SearchSpace)  # the candidate blocks
    blockwise_epochs: int = 2
    # The demo's student (Fashion-MNIST, Pi 4 budget, shipped teacher 92.97 %) from one block-wise phase: test top-1
    # 92.51 % after 4 epochs, 92.91 % after 5, 93.19 % after 8; an epoch is ~55 s on 2 AVX2 cores (the teacher's
    # outputs are computed once), so 5 keeps `make demo` near ten minutes there within 0.2 points of the teacher.
    finetune_epochs: int = 5
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the distillation term against cross-entropy
    # Fine-tuning also pulls every student block's output towards the teacher's at the same boundary
    # (normalised MSE, summed over blocks, times this weight): the blocks were distilled into the
    # teacher's feature space, and this keeps them there. 0 turns it off.
    feature_weight: float = 0.0
    patience: int = 2
    batch_size: int = 128
    lr: float = 3e-3
    pick: int | None = None  # a point of the Pareto front instead of the budget's best
    # Block-wise distillation trains every candidate at once (~25x the student's cost per sample), so it
    # sees a subset; fine-tuning trains the one student on all the training samples.
    blockwise_subset: int | None = 8000  # None: all
    # Successive halving in block-wise distillation (``halving.py``): after 1/rate^k of the steps (k = rungs..1) the
    # candidates still training are ranked by regret under the budget and 1/rate of them per block go on.
    # rate 1 trains every candidate to the end.
    halving_rate: int = 3
    halving_rungs: int = 2
    # Where a latency budget's table comes from: "host" (timed here with the first target's ONNX runtime and threads),
    # "board" (timed on the board of bench.host over SSH) or "roofline" (estimated from the profile's peaks).
    latency_from: str = "host"
    finetune_subset: int | None = None
    val_samples: int = 5000  # held out of the training split for scoring and early stopping
    seed: int = 0

    def __post_init__(self):
        for name, cls in (("budget", Budget), ("search_space", SearchSpace)):
            value = getattr(self, name)
            if isinstance(value, dict):
                unknown = set(value) - {f.name for f in fields(cls)}
                if unknown:
                    raise ConfigError(f"compress.{name}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                                      "valid fields: " + ", ".join(f.name for f in fields(cls)))
                object.__setattr__(self, name, cls(**value))
        for name, low in (("halving_rate", 1), ("halving_rungs", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"compress.{name}: bad value {value!r}, expected an integer >= {low}")
        if self.latency_from not in LATENCY_SOURCES:
            raise ConfigError(f"compress.latency_from: bad value {self.latency_from!r}, expected one of "
                              f"{', '.join(LATENCY_SOURCES)}")
        for name in ("boundaries", "frozen"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
