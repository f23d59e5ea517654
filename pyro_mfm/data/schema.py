"""What a multimodal data set holds: its modalities, its label, and where it came from.

A schema is plain data (JSON-able) so that it can be stored in the native HDF5 file and in a checkpoint, and
compared when a checkpoint is applied to a data set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

LabelKind = Literal["regression", "categorical", "multilabel"]
LABEL_KINDS = ("regression", "categorical", "multilabel")


class DataError(ValueError):
    """Bad input data. The message names the file, the key, the modality and what was expected."""


@dataclass(frozen=True)
class ModalitySpec:
    """One modality.

    Attributes:
        name: the modality's name (``"audio"``, ``"fou"``, ...); a valid HDF5 group name without ``/``.
        shape: ``(d,)`` for a vector modality, ``(T, d)`` for a sequence of ``T`` steps of ``d`` features.
        feature_names: optional names of the ``d`` features.
    """

    name: str
    shape: tuple[int, ...]
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.feature_names is not None:
            object.__setattr__(self, "feature_names", tuple(str(f) for f in self.feature_names))
        if not self.name or "/" in self.name:
            raise DataError(f"modality name {self.name!r}: expected a non-empty name without '/'")
        if len(self.shape) not in (1, 2) or any(s < 1 for s in self.shape):
            raise DataError(
                f"modality {self.name!r}: shape {self.shape} — expected (d,) for a vector or (T, d) for a sequence"
            )
        if self.feature_names is not None and len(self.feature_names) != self.dim:
            raise DataError(f"modality {self.name!r}: {len(self.feature_names)} feature names for {self.dim} features")

    @property
    def kind(self) -> str:
        return "vector" if len(self.shape) == 1 else "sequence"

    @property
    def is_sequence(self) -> bool:
        return len(self.shape) == 2

    @property
    def dim(self) -> int:
        """Features per vector or per step."""
        return self.shape[-1]

    @property
    def steps(self) -> int | None:
        return self.shape[0] if self.is_sequence else None


@dataclass(frozen=True)
class LabelSpec:
    """The label.

    Attributes:
        kind: ``"regression"`` (``dim`` real outputs), ``"categorical"`` (one of ``dim`` classes, stored as an
            integer) or ``"multilabel"`` (``dim`` independent 0/1 labels).
        dim: outputs, classes or labels.
        names: optional names of the outputs (regression, multilabel) or of the classes (categorical).
        low, high: optional declared range of regression labels (e.g. -3, 3 for CMU-MOSI sentiment); values outside
            are rejected on load.
    """

    kind: LabelKind
    dim: int
    names: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None

    def __post_init__(self):
        if self.kind not in LABEL_KINDS:
            raise DataError(f"label kind {self.kind!r}: expected one of {LABEL_KINDS}")
        object.__setattr__(self, "dim", int(self.dim))
        if self.dim < 1:
            raise DataError(f"label dim {self.dim}: expected at least 1")
        if self.names is not None:
            object.__setattr__(self, "names", tuple(str(n) for n in self.names))
            if len(self.names) != self.dim:
                raise DataError(f"label: {len(self.names)} names for dim {self.dim}")

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape of the stored label array."""
        return () if self.kind == "categorical" else (self.dim,)


@dataclass(frozen=True)
class Schema:
    """Modalities (in order), label, and provenance of a data set."""

    modalities: tuple[ModalitySpec, ...]
    label: LabelSpec | None = None
    name: str = ""
    attribution: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "modalities", tuple(self.modalities))
        names = [m.name for m in self.modalities]
        if not names:
            raise DataError("schema: expected at least one modality")
        if len(set(names)) != len(names):
            raise DataError(f"schema: duplicate modality names in {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def __getitem__(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"no modality {name!r}; the data set has {list(self.names)}")

    def check_modalities(self, names) -> tuple[str, ...]:
        """Validate a user's list of modality names (order of the schema kept)."""
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise DataError(f"unknown modalities {unknown}: the data set has {list(self.names)}")
        return tuple(n for n in self.names if n in names)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "attribution": self.attribution,
            "modalities": [asdict(m) for m in self.modalities],
            "label": None if self.label is None else asdict(self.label),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        mods = tuple(
            ModalitySpec(
                m["name"], tuple(m["shape"]), None if m.get("feature_names") is None else tuple(m["feature_names"])
            )
            for m in d["modalities"]
        )
        lab = d.get("label")
        label = None
        if lab is not None:
            label = LabelSpec(
                lab["kind"],
                lab["dim"],
                None if lab.get("names") is None else tuple(lab["names"]),
                lab.get("low"),
                lab.get("high"),
            )
        return cls(mods, label, d.get("name", ""), d.get("attribution", ""), dict(d.get("extra", {})))


def schema_differences(expected: Schema, got: Schema, strict: bool = False) -> list[str]:
    """What ``got`` (a data set's schema) has that differs from ``expected`` (a model's): missing or extra
    modalities, other shapes, a label of another kind or size (or one the model has none of); with ``strict``, also
    a missing label, other names, feature names, label names or ranges. Empty when a model trained on ``expected``
    can be used on ``got``."""
    out = []
    exp, new = {m.name: m for m in expected.modalities}, {m.name: m for m in got.modalities}
    missing = [m for m in exp if m not in new]
    extra = [m for m in new if m not in exp]
    if missing:
        out.append(f"no modality {', '.join(map(repr, missing))} (the data has {list(new)})")
    if extra:
        out.append(f"modality {', '.join(map(repr, extra))} that the model was not trained on")
    for name in exp:
        if name in new and exp[name].shape != new[name].shape:
            out.append(f"modality {name!r} of shape {list(new[name].shape)}, the model expects {list(exp[name].shape)}")
        elif strict and name in new and exp[name].feature_names != new[name].feature_names:
            out.append(f"modality {name!r} with other feature names")
    el, gl = expected.label, got.label
    label = lambda lab: "no label" if lab is None else f"a {lab.kind} label of dim {lab.dim}"  # noqa: E731
    if (el is None) != (gl is None) and (strict or el is None):
        # data without a label are fine to predict or impute on; a label the model does not know of is not
        out.append(f"{label(gl)}, the model expects {label(el)}")
    elif el is not None and gl is not None and (el.kind, el.dim) != (gl.kind, gl.dim):
        out.append(f"{label(gl)}, the model expects {label(el)}")
    elif strict and el is not None and (el.names, el.low, el.high) != (gl.names, gl.low, gl.high):
        out.append("a label with other class names or range")
    if strict and (expected.name, expected.attribution) != (got.name, got.attribution):
        out.append(f"data set name {got.name!r}, the model's is {expected.name!r}")
    return out
