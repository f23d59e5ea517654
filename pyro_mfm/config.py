"""Typed configurations. TOML files under ``models/`` map onto these dataclasses one to one.

A file has the tables ``[data]``, ``[model]``, ``[train]`` and ``[evaluate]``; unknown keys are errors, so a typo
never silently falls back to a default. Command lines override single fields with ``--set train.epochs=5``.
"""

from __future__ import annotations

import ast
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad configuration file or override; the message names the file, table and key."""


@dataclass
class DataConfig:
    """Where the data comes from.

    Attributes:
        source: ``"embedded:uci_mfeat"`` for a data set shipped with the package, or a path to a native HDF5 file
            (relative paths are resolved against the configuration file's folder, then the working directory).
        train_split, valid_split, test_split: split names in the file.
        nan_as_missing: treat samples with NaN features as missing for that modality instead of raising.
    """

    source: str = "embedded:uci_mfeat"
    train_split: str = "train"
    valid_split: str = "valid"
    test_split: str = "test"
    nan_as_missing: bool = False


@dataclass
class ModelConfig:
    """The generative model and its guide (see ``pyro_mfm.model``).

    Attributes:
        z_y_dim: size of the shared multimodal discriminative factor z_y.
        z_a_dim: size of each modality-specific generative factor z_a,m (one int, or a table modality -> int).
        f_y_dim, f_a_dim: sizes of the factor features f_y = G_y(z_y), f_a,m = G_m(z_a,m) (int or table).
        hidden: hidden width of every MLP (encoders, G, decoders F_m, label head D).
        dropout: dropout rate inside the MLPs (the paper's Linear-ReLU-Dropout-Linear-ReLU).
        label_likelihood: ``"auto"`` (Normal for regression, Categorical for classes, Bernoulli for multilabel),
            or one of ``"normal"``, ``"laplace"`` (the paper's L1 loss), ``"categorical"``, ``"bernoulli"``.
        x_scale: ``"learned"`` (a Normal scale per feature) or ``"fixed"`` (scale ``x_fixed_scale`` in
            standardised units).
        x_fixed_scale: the fixed scale, in units of each feature's training standard deviation.
        lambda_x: weight of each modality's likelihood (the paper's lambda_x; a float or a table modality -> float),
            applied with ``poutine.scale``.
        x_reduction: how a sample's log density of x_m enters the objective: ``"sum"`` over its real steps and
            features (the likelihood of the data), or ``"mean"``, divided by the number of elements of x_m (T x d or
            d): the paper's mean squared error when ``x_scale = "fixed"`` and ``x_fixed_scale`` = sqrt(1/2), whose
            log density is minus the squared error (standardised units) plus a constant.
        label_scale: scale of a ``normal`` or ``laplace`` label likelihood in the label's units (0: learned per
            output); 1 with ``laplace`` is the paper's L1 loss, |y - D(f_y)| + log 2.
        lambda_y: weight of the label likelihood.
        alpha: weight of the discriminative term (label likelihood of the guide's mean code, as the ss-VAE's
            auxiliary loss); 0 turns it off.
        objective: ``"elbo"`` (stochastic Gaussian guide, the ELBO plus ``alpha`` times the discriminative term) or
            ``"wae"`` (the paper's: deterministic codes, -log-likelihood of the observed modalities and label plus
            ``lambda_mmd`` times the minibatch MMD between the codes and N(0, I) for z_y and every z_a,m; ``alpha``
            and ``analytic_kl`` are not used, and z_y is coded from the modalities alone).
        label_subsets: random subsets of each sample's observed modalities (of uniformly drawn sizes) on which the
            discriminative term is evaluated as well, each as its own label term, so that the posterior of every
            subset, single modalities included, is trained to predict the label (0: the observed ones only).
        label_samples: draws of z_y per discriminative term: 0 scores the label at the posterior mean code (the
            ss-VAE's auxiliary loss), K > 0 scores the posterior predictive log (1/K) sum_k p(y | z_k), the quantity
            prediction reports, so that its spread is trained as well as its centre.
        analytic_kl: use TraceMeanField_ELBO (analytic KL of the Gaussian factors) instead of Trace_ELBO.
        num_particles: ELBO particles per step.
        sequence_net: encoder trunk and decoder F_m of sequence modalities: ``"mlp"`` (flattened over the T steps)
            or ``"lstm"`` (an LSTM over the real steps for q(z_a,m | x_m); an LSTM decoder that reads [f_y; f_a,m]
            at step 0 and its own previous hidden state after, with a Linear to d_m at every step).
        lstm_hidden: hidden size of each modality's LSTM (the encoder's and the MFN's; int or table modality -> int).
        fusion: the encoder of z_y: ``"poe"`` (product of the modalities' Gaussian experts) or ``"mfn"`` (the
            Memory Fusion Network over all sequence modalities; every modality must be a sequence of the same T).
        mfn_memory: size of the MFN's multi-view gated memory u_t.
        lambda_mmd: weight of the MMD terms of ``wae`` (a float for every factor, or a table with keys ``z_y``
            and modality names, one per z_a,m).
        mmd_kernel: ``"gaussian"`` k(x, x') = exp(-||x - x'||^2 / s) or ``"imq"`` k(x, x') = s / (s + ||x - x'||^2).
        mmd_scale: the kernel's s; 0 picks the paper's s = dim^2 (gaussian) or s = 2 dim (imq).
        mmd_estimator: ``"biased"`` (the paper's V-statistic, with the diagonal) or ``"unbiased"`` (U-statistic).
        missing: the code of a modality missing for a sample: ``"poe"`` (z_a,m from its prior; z_y from the
            product of the observed experts or the MFN with zeroed states) or ``"surrogate"`` (the paper's surrogate
            inference: a small MLP per modality maps z_y and the observed modalities' encoder features to the
            missing modality's code, trained with an MSE match to the code the full data give).
        surrogate_weight: weight of the surrogate's MSE term.
        ablation: ``"none"`` (the MFM), ``"no_shared"`` (no z_y: y reads all f_a,m, each decoder its own f_a,m),
            ``"shared_only"`` (no z_a,m: every decoder reads f_y alone) or ``"discriminative"`` (no decoders and no
            prior matching: the label likelihood of the codes alone).
    """

    z_y_dim: int = 16
    z_a_dim: Any = 8
    f_y_dim: int = 32
    f_a_dim: Any = 16
    hidden: int = 128
    dropout: float = 0.0
    label_likelihood: str = "auto"
    x_scale: str = "learned"
    x_fixed_scale: float = 1.0
    lambda_x: Any = 1.0
    x_reduction: str = "sum"
    label_scale: float = 0.0
    lambda_y: float = 1.0
    alpha: float = 1.0
    label_subsets: int = 0
    label_samples: int = 0
    objective: str = "elbo"
    analytic_kl: bool = True
    num_particles: int = 1
    sequence_net: str = "mlp"
    lstm_hidden: Any = 32
    fusion: str = "poe"
    mfn_memory: int = 64
    lambda_mmd: Any = 1.0
    mmd_kernel: str = "gaussian"
    mmd_scale: float = 0.0
    mmd_estimator: str = "biased"
    missing: str = "poe"
    surrogate_weight: float = 1.0
    ablation: str = "none"

    def per_modality(self, key: str, names) -> dict:
        value = getattr(self, key)
        if isinstance(value, dict):
            missing = [m for m in names if m not in value]
            if missing:
                raise ConfigError(f"model.{key}: no value for modalities {missing} (table has {sorted(value)})")
            return {m: value[m] for m in names}
        return {m: value for m in names}

    def validate(self) -> "ModelConfig":
        choices = {
            "label_likelihood": ("auto", "normal", "laplace", "categorical", "bernoulli"),
            "x_scale": ("learned", "fixed"),
            "x_reduction": ("sum", "mean"),
            "objective": ("elbo", "wae"),
            "sequence_net": ("mlp", "lstm"),
            "fusion": ("poe", "mfn"),
            "mmd_kernel": ("gaussian", "imq"),
            "mmd_estimator": ("biased", "unbiased"),
            "missing": ("poe", "surrogate"),
            "ablation": ("none", "no_shared", "shared_only", "discriminative"),
        }
        if not isinstance(self.label_scale, (int, float)) or self.label_scale < 0:
            raise ConfigError(f"model.label_scale = {self.label_scale!r}: expected a number >= 0 (0: learned)")
        for key in ("label_subsets", "label_samples"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"model.{key} = {v!r}: expected an integer >= 0")
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"model.{key} = {getattr(self, key)!r}: expected one of {allowed}")
        if self.fusion == "mfn" and self.ablation == "no_shared":
            raise ConfigError("model.fusion = 'mfn' encodes z_y, which model.ablation = 'no_shared' removes")
        if self.missing == "surrogate" and self.ablation in ("shared_only", "discriminative"):
            raise ConfigError(f"model.missing = 'surrogate' predicts z_a codes, which model.ablation = "
                              f"{self.ablation!r} removes")
        return self


@dataclass
class TrainConfig:
    """Stochastic variational inference.

    Attributes:
        epochs: maximum number of passes over the training split.
        batch_size: samples per step.
        lr: Adam learning rate.
        weight_decay: decoupled weight decay of every network weight (AdamW; 0: Adam).
        clip_norm: gradient norm clipping (0 turns it off).
        kl_warmup: epochs over which the weight of the KL terms rises linearly from 0 to 1 (0: no warm-up);
            model selection and early stopping only start once it is over.
        seed: seeds parameters, minibatch order and sampling.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``"auto"`` (CUDA when available).
        modality_dropout: probability of hiding each observed modality of a training sample for a step
            (at least one stays), so that q(z_y | observed) learns every subset.
        select_metric: validation metric for model selection and early stopping (``"auto"``: accuracy for classes,
            MAE for regression, the ELBO loss otherwise); a ``-`` prefix is not needed: the direction is known.
        patience: epochs without improvement before stopping (0: never stop early).
        valid_samples: posterior samples per validation prediction.
        progress: show a tqdm progress bar.
        num_threads: PyTorch's CPU threads while training and evaluating (0: PyTorch's default). The networks are
            small, so one thread is as fast as several on an idle machine and far faster on a busy one.
        keep_last: epoch checkpoints ``epoch-XXXX.pt`` kept besides ``last.pt`` and ``best.pt`` (the newest K);
            ``--resume`` falls back to the newest readable one when ``last.pt`` is corrupt (0: keep none).
        on_divergence: what a non-finite loss or gradient does: ``"stop"`` (leave the parameters and optimizer at
            the last good step, save, and raise an error naming the sample sites and the batch) or ``"skip"`` (drop
            that step, report it, and go on; an epoch with every step dropped stops training).
        validate: Pyro's and torch's distribution checks (shapes, supports, per-site NaN warnings) in training:
            ``"first"`` on the first step of a run, which catches a model or data mistake at once, then off (the
            loop checks every step's loss, gradients and parameters for non-finite values itself, and the checks
            cost about a tenth of a step on small networks); ``"always"`` on every step.
        calibrate: after training, fit on the validation split (:mod:`pyro_mfm.infer.calibrate`) ``"all"``: how
            much precision each modality's expert of z_y may claim and the label likelihood's spread; ``"label"``:
            the label's spread only (point predictions unchanged); ``"none"``. Stored in ``best.pt`` and written to
            ``calibration.json``.
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_norm: float = 10.0
    kl_warmup: int = 10
    seed: int = 0
    device: str = "auto"
    modality_dropout: float = 0.25
    select_metric: str = "auto"
    patience: int = 20
    valid_samples: int = 20
    progress: bool = True
    num_threads: int = 1
    keep_last: int = 3
    on_divergence: str = "stop"
    validate: str = "first"
    calibrate: str = "label"


@dataclass
class EvaluateConfig:
    """Evaluation and imputation.

    Attributes:
        num_samples: posterior samples per prediction or imputation.
        interval: mass of the central credible interval reported (and whose coverage is measured).
        batch_size: samples per forward pass.
        seed: seeds the posterior draws of evaluation, prediction and imputation (``evaluate``, ``impute`` and the
            report of ``run``; ``--seed`` overrides it), so that they give the same numbers every time on CPU.
    """

    num_samples: int = 100
    interval: float = 0.9
    batch_size: int = 512
    seed: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    path: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("path")
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "<dict>") -> "Config":
        cfg = cls()
        for table, value in d.items():
            sub = getattr(cfg, table, None)
            if table == "path" or not dataclasses.is_dataclass(sub):
                raise ConfigError(f"{where}: unknown table [{table}]; expected data, model, train, evaluate")
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{table}] must be a table")
            names = {f.name for f in dataclasses.fields(sub)}
            for key, v in value.items():
                if key not in names:
                    raise ConfigError(f"{where}: unknown key {table}.{key}; expected one of {sorted(names)}")
                setattr(sub, key, v)
        cfg.model.validate()
        if cfg.train.validate not in ("first", "always"):
            raise ConfigError(f"{where}: train.validate = {cfg.train.validate!r}: expected 'first' or 'always'")
        if cfg.train.calibrate not in ("all", "label", "none"):
            raise ConfigError(f"{where}: train.calibrate = {cfg.train.calibrate!r}: expected 'all', 'label' or 'none'")
        if cfg.train.on_divergence not in ("stop", "skip"):
            raise ConfigError(f"{where}: train.on_divergence = {cfg.train.on_divergence!r}: expected 'stop' or 'skip'")
        if not isinstance(cfg.train.keep_last, int) or cfg.train.keep_last < 0:
            raise ConfigError(f"{where}: train.keep_last = {cfg.train.keep_last!r}: expected an integer >= 0")
        return cfg

    @classmethod
    def load(cls, path, overrides=()) -> "Config":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"configuration file {path}: not valid TOML ({e})") from None
        cfg = cls.from_dict(raw, where=str(path))
        cfg.path = str(path)
        src = cfg.data.source
        if not src.startswith("embedded:") and not Path(src).is_absolute() and (path.parent / src).exists():
            cfg.data.source = str((path.parent / src).resolve())
        return cfg.override(overrides)

    def override(self, overrides) -> "Config":
        """Apply ``table.key=value`` strings (values parsed as Python/TOML literals, else kept as strings)."""
        d = self.to_dict()
        for item in overrides:
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise ConfigError(f"override {item!r}: expected table.key=value, e.g. train.epochs=5")
            lhs, rhs = item.split("=", 1)
            table, key = lhs.strip().split(".", 1)
            try:
                value = ast.literal_eval(rhs.strip())
            except (ValueError, SyntaxError):
                value = {"true": True, "false": False}.get(rhs.strip().lower(), rhs.strip())
            d.setdefault(table, {})[key] = value
        cfg = Config.from_dict(d, where=f"{self.path or '<config>'} with overrides")
        cfg.path = self.path
        return cfg
