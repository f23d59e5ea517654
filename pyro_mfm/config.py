"""Typed configurations. TOML files under ``models/`` map onto these dataclasses one to one.

A file has the tables ``[data]``, ``[model]``, ``[train]`` and ``[evaluate]``; unknown keys are errors, so a typo
never silently falls back to a default. Command lines override single fields with ``--set train.epochs=5``.

Every field declares what it accepts beside it: its type annotation (``int``, ``float``, ``bool``, ``str``, a
``Literal[...]`` of choices, or ``X | dict[str, X]`` for a value per modality) and, in the field's metadata
(:func:`setting`, from :mod:`pyro_mfm.config_fields`), the bounds of a number or the pattern of a string. One
validator, :func:`check_table`, checks every table against these declarations; a value of the wrong type or out of
range is a :class:`ConfigError` that names the table, the key, the value and what was expected. Integers are not
accepted for booleans nor booleans for numbers; an integer is accepted for a float field (and stored as a float);
NaN and infinities never are.
"""

from __future__ import annotations

import ast
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .config_fields import SHORT_REPR, ConfigError, check_fields, setting  # noqa: F401  (ConfigError: re-exported)
from .metric_directions import HIGHER_IS_BETTER

# Widths beyond this would make a single hidden-by-hidden weight matrix hundreds of MB: a typo, not a model.
MAX_WIDTH = 8192
# Posterior draws per prediction or per training term: each batch holds draws x batch x width numbers at once.
MAX_DRAWS = 10_000
# the most modalities whose subsets model.linear_refit refits one by one (2^M - 1 posteriors)
MAX_REFIT_MODALITIES = 8
# np.random.seed, which Pyro's seeding calls, accepts 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
# Validation metrics that model selection knows the direction of (:data:`pyro_mfm.metric_directions.HIGHER_IS_BETTER`).
SELECT_METRICS = ("auto", *HIGHER_IS_BETTER)


def check_table(table, where: str = "<config>") -> None:
    """Check (and normalise: an integer for a float becomes a float) every field of the dataclass ``table`` against
    its declaration; raises :class:`ConfigError` naming ``where``, the table, the key, the value and what was
    expected."""
    check_fields(table, TABLES[type(table)], where)


class _Table:
    def check(self, where: str = "<config>"):
        """Check every field against its declaration (see :func:`check_table`) and the rules between fields."""
        check_table(self, where)
        self._cross_check(where)
        return self

    def _cross_check(self, where: str) -> None:
        pass


def _split(default: str):
    return setting(default, pattern=r".+", what="a non-empty split name")


@dataclass
class DataConfig(_Table):
    """Where the data comes from.

    Attributes:
        source: ``"embedded:uci_mfeat"`` for a data set shipped with the package, or a path to a native HDF5 file
            (relative paths are resolved against the configuration file's folder, then the working directory).
        train_split, valid_split, test_split: split names in the file.
        valid_fraction: where the data have no validation split (or an empty one), training holds this fraction of the
            training split out as one (by whole groups: speakers or videos, where the data name them; else stratified by
            class for class labels; a new draw for each ``train.seed``), so that model selection, early stopping and the
            label calibration have samples the model was not fitted to. 0.15 is the share of CMU-MOSI's standard
            validation split in its training and validation segments. 0: train on the whole split and select on the
            training loss, without calibration (the default before).
        nan_as_missing: treat samples with NaN features as missing for that modality instead of raising.
    """

    source: str = setting("embedded:uci_mfeat", pattern=r"(?s).+", what="'embedded:NAME' or the path of a data file")
    train_split: str = _split("train")
    valid_split: str = _split("valid")
    test_split: str = _split("test")
    valid_fraction: float = setting(0.15, ge=0, lt=1)
    nan_as_missing: bool = False


@dataclass
class ModelConfig(_Table):
    """The generative model and its guide (see ``pyro_mfm.model``).

    Attributes:
        z_y_dim: size of the shared multimodal discriminative factor z_y.
        z_a_dim: size of each modality-specific generative factor z_a,m (one int, or a table modality -> int).
        f_y_dim, f_a_dim: sizes of the factor features f_y = G_y(z_y), f_a,m = G_m(z_a,m) (int or table).
        hidden: hidden width of every MLP (encoders, G, decoders F_m, label head D), unless one of the part widths
            below says otherwise for its part.
        encoder_hidden: width of each modality's encoder features h_m (the trunk's output, read by the experts;
            int or table modality -> int; 0: ``hidden``).
        encoder_lstm_hidden: hidden size of each sequence modality's encoder LSTM (int or table; 0: ``lstm_hidden``).
        expert_layers: hidden layers of every expert's MLP (h_m -> the expert of z_y; [h_m; z_y] -> q(z_a,m)),
            each ``hidden`` wide; 0 makes an expert one Linear layer.
        factor_hidden: hidden width of the factor nets G_y and G_m (an int, or a table with keys ``z_y`` and
            modality names; 0: ``hidden``). MMSA's and the authors' MFM make each as wide as its features f.
        label_hidden: hidden width of the label head D (0: ``hidden``).
        mfn_hidden: hidden widths of the MFN's four MLPs (an int, or a table with keys ``attention``,
            ``propose``, ``gate1``, ``gate2``; 0: ``hidden``). MMSA's MFM on MOSI: 32 / 64 / 32 / 64.
        dropout: dropout rate inside the MLPs (the paper's Linear-ReLU-Dropout-Linear-ReLU).
        input_dropout: dropout rate of the guide's standardised inputs x_m in training (0: none). On a linear
            model, dropping inputs is a ridge penalty scaled to each feature's spread (Wager et al., NeurIPS 2013):
            it keeps an expert from claiming evidence from single features that does not carry over to new samples.
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
        label_weight: ``"auto"``: for a class (or multilabel) label, the discriminative term's weight is ``alpha``
            times the number of features per sample (per step of a sequence, summed over the modalities) over the
            number of label variables, so that the label counts in the objective as much as the features that
            predict it (a class label has no scale of its own that could grow its weight; UCI's 649 features per
            digit against one class left every subset 2-15 points below a logistic regression at ``alpha = 1``,
            0.7 points on average at the scaled weight). A regression label is left at ``alpha``: its likelihood's
            learned scale weighs it, and on POM a scaled weight cost MAE. ``"fixed"``: ``alpha`` as given, the
            weighting under which unlabelled samples inform z_y (for semi-supervised training: with 90% of the
            labels missing on data from the MFM's own story, "auto" lost the gain they give; `docs/quality.md`).
        objective: ``"elbo"`` (stochastic Gaussian guide, the ELBO plus ``alpha`` times the discriminative term) or
            ``"wae"`` (the paper's: deterministic codes, -log-likelihood of the observed modalities and label plus
            ``lambda_mmd`` times the minibatch MMD between the codes and N(0, I) for z_y and every z_a,m; ``alpha``
            and ``analytic_kl`` are not used, and z_y is coded from the modalities alone).
        label_subsets: random subsets of each sample's observed modalities (one modality half of the time, else a
            size drawn uniformly from 2 up) on which the discriminative term is evaluated as well, each as its own
            label term, so that the posterior of every subset, single modalities included, is trained to predict
            the label (0: the observed ones only). The mean of the terms carries the weight ``alpha``. Default 2: on
            UCI, subset terms raise single-view accuracy by 2-9 points; on POM, 2 is slightly better than 0 and 4
            (`docs/quality.md`).
        impute_subsets: random subsets S of each sample's observed modalities (sizes drawn uniformly from 1 up) on
            which the modalities observed but outside S are scored as imputation draws them: lambda_x,m log p(x_m |
            F_m(G_y(z_y), G_m(z_a,m))), z_y ~ q(z_y | x_S) and z_a,m from its prior, one reparameterised draw, a
            term of weight 1 per subset (0: none, the default; the ``elbo`` objective, with z_y and decoders). The
            ELBO scores x_m only with z_a,m drawn from q(z_a,m | x_m, z_y), which reads x_m itself; this term trains
            what imputation reports.
        label_samples: draws of z_y per discriminative term: 0 scores the label at the posterior mean code (the
            ss-VAE's auxiliary loss), K > 0 scores the posterior predictive log (1/K) sum_k p(y | z_k), the quantity
            prediction reports, so that its spread is trained as well as its centre.
        analytic_kl: use TraceMeanField_ELBO (analytic KL of the Gaussian factors) instead of Trace_ELBO.
        num_particles: ELBO particles per step.
        sequence_net: encoder trunk and decoder F_m of sequence modalities: ``"lstm"`` (default: an LSTM over the
            real steps for q(z_a,m | x_m); an LSTM decoder that reads [f_y; f_a,m] at step 0 and its own previous
            hidden state after, with a Linear to d_m at every step) or ``"mlp"`` (flattened over the T steps; on
            POM's 20 steps of 43 and 41 features it overfits: MAE 0.998 against the LSTMs' 0.931).
        sequence_mean: with ``sequence_net = "lstm"``, each sequence encoder reads the mean of x_m over its real
            steps beside its LSTM's last state, and with ``fusion = "mfn"`` so does the MFN's output layer to z_y.
        lstm_hidden: hidden size of each modality's LSTM (the encoder's and the MFN's; int or table modality -> int).
        expert: each modality's expert of z_y in the product of experts: ``"mlp"`` (eta_m and Lambda_m from the
            encoder's features through ``expert_layers`` hidden layers), ``"linear"`` (the form of a
            linear-Gaussian modality's exact expert: eta_m linear in the standardised features, or in the mean over
            the real steps of a sequence read by an LSTM, and one Lambda_m for every sample). On data whose features
            are near-linear and noisy (``inference/speaker_testbed.py``, shaped like CMU-MOSI) ``"linear"`` is level
            with a per-subset ridge regression where the MLP experts trail it by 0.02-0.13 MAE; on POM and UCI it is
            far worse (`docs/quality.md`), or ``"both"`` (the default): an ensemble's (``train.ensemble``) members
            take the two forms in turn, member 0 the MLP (a single MFM is then the MLP form), and the ensemble's
            predictive of the label weighs the two forms for each observed subset by how well each predicts the
            validation split's labels (:func:`~pyro_mfm.infer.calibrate.calibrate_ensemble`; equally with
            ``train.calibrate = "none"``), so that the data decide which form each subset takes (on the testbed the
            weak modalities' gap to the ridge halves; on POM's sequences it costs 0.01 MAE). With ``fusion = "mfn"``
            (no experts) every member is the MLP form.
        linear_refit: for the linear form's experts (``expert = "linear"``, and the linear members of ``"both"``;
            on by default): after training, each observed subset's posterior of z_y is refitted in closed form to the
            model's own full posterior, the full posterior with the hidden modalities integrated out: a ridge
            regression of its mean on the subset's inputs over the training and the validation split (the latter's
            posteriors out of sample; no labels are read), with the covariance of its held-out residuals plus the
            full posterior's mean covariance as the covariance. Penalty and residuals by leave-one-out, or by folds
            of whole groups where the samples name them (speakers, videos). The subset of every modality keeps the
            product of experts, the model's own posterior, and so do samples with a known absence
            (``missingness``). With more than :data:`MAX_REFIT_MODALITIES` modalities it is left out, with a
            warning. On the speaker testbed it took audio, video and audio + video 0.014-0.044 MAE closer to the
            ridge (within 0.009-0.026 of it with whole speakers held out, over six seeds) and POM's audio alone
            0.001-0.003 lower, and left UCI level (`docs/quality.md`, "Each subset's posterior refitted"). The
            calibration (``train.calibrate``) scores the refitted posteriors, with the validation samples'
            held-out means, and fits one factor on their covariances.
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
        missingness: whether a modality's absence is an observation. ``"informative"``: for each modality that some
            training samples lack, whether a sample has it is an observed site of the model, r_m ~
            Bernoulli(sigmoid(b_m + W_m z_y)), and a known absence is one more expert of z_y in the guide (a learned
            Gaussian factor), so that where a modality is missing not at random its absence informs the label (on
            POM's sequences, videos without FACET features are rated lower). ``"ignorable"``: missing at random, a
            missing modality's likelihood masked out and nothing else. ``"auto"`` (the default): informative for the
            modalities whose absence the training split finds dependent on the label (a chi-squared test for a class
            label, Welch's t-tests otherwise, at level 0.01 over all of them), ignorable for the others: an absence
            observed where it tells nothing costs the other subsets a little. Data without missing modalities, and
            the MFN (``fusion = "mfn"``), train as with ``"ignorable"``.
        ablation: ``"none"`` (the MFM), ``"no_shared"`` (no z_y: y reads all f_a,m, each decoder its own f_a,m),
            ``"shared_only"`` (no z_a,m: every decoder reads f_y alone) or ``"discriminative"`` (no decoders and no
            prior matching: the label likelihood of the codes alone).
    """

    z_y_dim: int = setting(16, ge=1, le=MAX_WIDTH)
    z_a_dim: int | dict[str, int] = setting(8, ge=1, le=MAX_WIDTH)
    f_y_dim: int = setting(32, ge=1, le=MAX_WIDTH)
    f_a_dim: int | dict[str, int] = setting(16, ge=1, le=MAX_WIDTH)
    hidden: int = setting(128, ge=1, le=MAX_WIDTH)
    encoder_hidden: int | dict[str, int] = setting(0, ge=0, le=MAX_WIDTH)
    encoder_lstm_hidden: int | dict[str, int] = setting(0, ge=0, le=MAX_WIDTH)
    expert_layers: int = setting(2, ge=0, le=16)
    factor_hidden: int | dict[str, int] = setting(0, ge=0, le=MAX_WIDTH)
    label_hidden: int = setting(0, ge=0, le=MAX_WIDTH)
    mfn_hidden: int | dict[str, int] = setting(0, ge=0, le=MAX_WIDTH)
    dropout: float = setting(0.0, ge=0, lt=1)
    input_dropout: float = setting(0.0, ge=0, lt=1)
    label_likelihood: Literal["auto", "normal", "laplace", "categorical", "bernoulli"] = "auto"
    x_scale: Literal["learned", "fixed"] = "learned"
    x_fixed_scale: float = setting(1.0, gt=0)
    lambda_x: float | dict[str, float] = setting(1.0, ge=0)
    x_reduction: Literal["sum", "mean"] = "sum"
    label_scale: float = setting(0.0, ge=0)
    lambda_y: float = setting(1.0, ge=0)
    alpha: float = setting(1.0, ge=0)
    label_weight: Literal["auto", "fixed"] = "auto"
    label_subsets: int = setting(2, ge=0, le=100)
    impute_subsets: int = setting(0, ge=0, le=100)
    label_samples: int = setting(0, ge=0, le=MAX_DRAWS)
    objective: Literal["elbo", "wae"] = "elbo"
    analytic_kl: bool = True
    num_particles: int = setting(1, ge=1, le=MAX_DRAWS)
    sequence_net: Literal["mlp", "lstm"] = "lstm"
    sequence_mean: bool = True
    lstm_hidden: int | dict[str, int] = setting(32, ge=1, le=MAX_WIDTH)
    expert: Literal["mlp", "linear", "both"] = "both"
    fusion: Literal["poe", "mfn"] = "poe"
    mfn_memory: int = setting(64, ge=1, le=MAX_WIDTH)
    lambda_mmd: float | dict[str, float] = setting(1.0, ge=0)
    mmd_kernel: Literal["gaussian", "imq"] = "gaussian"
    mmd_scale: float = setting(0.0, ge=0)
    mmd_estimator: Literal["biased", "unbiased"] = "biased"
    missing: Literal["poe", "surrogate"] = "poe"
    surrogate_weight: float = setting(1.0, ge=0)
    missingness: Literal["auto", "informative", "ignorable"] = "auto"
    ablation: Literal["none", "no_shared", "shared_only", "discriminative"] = "none"
    linear_refit: bool = True

    @property
    def has_z_y(self) -> bool:
        """The model has the shared factor z_y (every ablation but ``no_shared``)."""
        return self.ablation != "no_shared"

    @property
    def has_z_a(self) -> bool:
        """The model has the modality factors z_a,m (no ablation, or ``no_shared``)."""
        return self.ablation in ("none", "no_shared")

    @property
    def observes_absences(self) -> bool:
        """A missing modality's absence may be an observation of the model (``missingness`` not ``"ignorable"``,
        with z_y and a product of experts, to which an absence adds its expert); which absences it observes depends on
        the training split (:func:`pyro_mfm.guide.missing_not_at_random`)."""
        return self.missingness != "ignorable" and self.has_z_y and self.fusion == "poe"

    @property
    def has_decoders(self) -> bool:
        """The model has the modalities' likelihoods x_m (every ablation but ``discriminative``)."""
        return self.ablation != "discriminative"

    def per_modality(self, key: str, names) -> dict:
        value = getattr(self, key)
        if isinstance(value, dict):
            missing = [m for m in names if m not in value]
            if missing:
                raise ConfigError(f"model.{key}: no value for modalities {missing} (table has {sorted(value)})")
            return {m: value[m] for m in names}
        return {m: value for m in names}

    def widths(self, key: str, parts, default) -> dict:
        """The width of each of ``parts`` that the part-width field ``key`` gives (an int or a table part -> int),
        with 0 meaning ``default`` (an int, or a table part -> int)."""
        value = getattr(self, key)
        if isinstance(value, dict):
            missing = [p for p in parts if p not in value]
            unknown = sorted(set(value) - set(parts))
            if missing or unknown:
                raise ConfigError(
                    f"model.{key}: the table has keys {sorted(value)}; expected exactly {list(parts)}"
                    + (f" (missing {missing})" if missing else "")
                )
        fallback = default if isinstance(default, dict) else dict.fromkeys(parts, default)
        given = value if isinstance(value, dict) else dict.fromkeys(parts, value)
        return {p: given[p] or fallback[p] for p in parts}

    def validate(self, where: str = "<config>") -> ModelConfig:
        return self.check(where)

    def _cross_check(self, where: str) -> None:
        if self.expert == "linear" and self.fusion == "mfn":
            raise ConfigError(
                f"{where}: model.expert = 'linear' is an expert of the product of experts; model.fusion = 'mfn' "
                "encodes z_y without experts (set model.fusion = 'poe')"
            )
        if self.fusion == "mfn" and self.ablation == "no_shared":
            raise ConfigError(f"{where}: model.fusion = 'mfn' encodes z_y, which model.ablation = 'no_shared' removes")
        if self.impute_subsets and (self.objective != "elbo" or self.ablation in ("no_shared", "discriminative")):
            raise ConfigError(
                f"{where}: model.impute_subsets = {self.impute_subsets} scores decoders at draws of z_y, a term of "
                f"the 'elbo' objective with z_y and decoders; got model.objective = {self.objective!r}, "
                f"model.ablation = {self.ablation!r}"
            )
        if self.missing == "surrogate" and self.ablation in ("shared_only", "discriminative"):
            raise ConfigError(
                f"{where}: model.missing = 'surrogate' predicts z_a codes, which model.ablation = "
                f"{self.ablation!r} removes"
            )


@dataclass
class TrainConfig(_Table):
    """Stochastic variational inference.

    Attributes:
        epochs: maximum number of passes over the training split.
        batch_size: samples per step.
        lr: Adam learning rate.
        weight_decay: decoupled weight decay of every network weight (AdamW; 0: Adam).
        lr_schedule: ``"constant"``, or ``"cosine"``: the learning rate falls from ``lr`` to 0 along half a cosine
            over ``epochs`` (SGDR without restarts, Loshchilov and Hutter, ICLR 2017), so that the weights settle
            instead of being selected at a random point of a noisy trajectory; ``"plateau"``: the rate is halved
            after more than 5 scored epochs without a better selection score (``ReduceLROnPlateau``), so that it
            falls where the selection stalls, whatever ``epochs`` is.
        clip_norm: gradient norm clipping (0 turns it off).
        kl_warmup: epochs over which the weight of the KL terms rises linearly from 0 to 1 (0: no warm-up);
            model selection and early stopping only start once it is over.
        seed: seeds parameters, minibatch order and sampling.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``"auto"`` (CUDA when available).
        modality_dropout: probability of hiding each observed modality of a training sample for a step
            (at least one stays), so that q(z_y | observed) learns every subset.
        select_metric: validation metric for model selection and early stopping (``"auto"``: accuracy for classes,
            MAE for regression, the ELBO loss otherwise); a ``-`` prefix is not needed: the direction is known.
        select_over: what the label metric of model selection is computed on: ``"subsets"``, its mean over the
            validation predictions from all modalities and from each modality alone (each on the samples that
            recorded it: the weakest prediction the model makes is scored too); ``"observed"``, the predictions from
            all modalities alone. With the library's defaults on UCI, the prediction from all six views kept its
            best validation accuracy from epochs 10-18 of 100, and selecting on it left single views 5-10 points
            below what the epochs after give them (`docs/quality.md`). The extra predictions draw from
            a seed of their own: the training is the same under either.
        patience: epochs without improvement before stopping (0: never stop early).
        valid_samples: posterior samples per validation prediction.
        progress: show a tqdm progress bar.
        num_threads: PyTorch's CPU threads while training and evaluating (0: PyTorch's default). The networks are
            small, so one thread is as fast as several on an idle machine and far faster on a busy one.
        matmul_precision: the internal precision of float32 matrix products while training and evaluating
            (:func:`torch.set_float32_matmul_precision`, restored afterwards): ``"highest"``, float32 throughout
            (PyTorch's default, and the same numbers on every machine); ``"high"``, TensorFloat32 on a GPU that has
            it; ``"medium"``, bfloat16 inputs where the hardware has fast products of them (a CPU's products then
            run through oneDNN). Outputs stay float32. On an AMD EPYC CPU with AVX-512 BF16, ``"medium"`` gave
            float32's own results (oneDNN's float32 kernels, faster than MKL's there) and predicted and imputed the
            UCI test split 1.25x and 1.6x as fast; training steps of MOSI-shaped sequences 1.2x as fast, of UCI at
            batch 64 1.1x slower (``benchmarks/README.md``).
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
            the label's spread only, for a regression label with each observed modality's share of it (point
            predictions unchanged); ``"pairs"``: the label's spread and each pair of modalities' redundancy (a
            discount of both experts where both are observed), the experts' temperatures left at 1; ``"auto"``:
            ``"pairs"`` for a class label, ``"label"`` for a regression label; ``"none"``. With a class label every
            mode also fits each modality's own offset of the label's temperature where it is observed alone (kept
            where it gains more than one nat on the validation split). With ``model.linear_refit``, every mode also
            fits one factor on the refitted posteriors' covariances. Stored in ``best.pt`` and written to
            ``calibration.json``.
        average_weights: stochastic weight averaging over the patience window (Izmailov et al., UAI 2018): keep
            the mean of the weights at the end of the best epoch and of every epoch trained after it, where that
            mean scores on the validation split at least as well as the median of those epochs (else the best
            epoch's weights), so that the kept weights are not one noisy point of the trajectory. (The best epoch's
            own score is the best of those noisy scores, and so flatters it.) The epochs that early
            stopping trains past the best are what it averages: no training is added. On the library's defaults it
            took UCI's mean over the 63 subsets from +0.50 to +0.87 points above the logistic regressions
            (`docs/quality.md`).
        ensemble: how many MFMs to train, each from a seed of its own (the first from ``seed``), whose posterior
            predictive is the mixture of theirs, equal or weighed per form (``model.expert = "both"``)
            (:class:`~pyro_mfm.ensemble.Ensemble`; deep ensembles, Lakshminarayanan et al., NeurIPS 2017). One
            training's predictions vary with its initialisation and minibatch order, most on weakly informative
            modalities; the mixture averages that variance out and widens the intervals where the members disagree.
            With an output folder each member trains into ``member-K/`` of it. 1: a single MFM.
        ensemble_processes: how many of the members train at once, each in a process of its own with
            ``num_threads`` threads (0: one per CPU core this process may use, over ``num_threads``, at most
            ``ensemble``, on a CPU device; one on a GPU or under ``torchrun``). 1: one after the other in this
            process. The members are the same either way; a run's ``on_epoch`` callback and data that cannot be
            pickled (a lazily read HDF5 file) train them one after the other.
    """

    epochs: int = setting(100, ge=1, le=1_000_000)
    batch_size: int = setting(128, ge=1, le=100_000_000)
    lr: float = setting(1e-3, gt=0, le=100)
    weight_decay: float = setting(0.0, ge=0)
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    clip_norm: float = setting(10.0, ge=0)
    kl_warmup: int = setting(10, ge=0, le=1_000_000)
    seed: int = setting(0, ge=0, le=MAX_SEED)
    device: str = setting("auto", pattern=r"auto|cpu|cuda(:[0-9]+)?", what="'auto', 'cpu', 'cuda' or 'cuda:N'")
    modality_dropout: float = setting(0.25, ge=0, le=1)
    select_metric: Literal[SELECT_METRICS] = "auto"
    select_over: Literal["subsets", "observed"] = "subsets"
    patience: int = setting(20, ge=0, le=1_000_000)
    valid_samples: int = setting(20, ge=1, le=MAX_DRAWS)
    progress: bool = True
    num_threads: int = setting(1, ge=0, le=1024)
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    keep_last: int = setting(3, ge=0, le=1_000_000)
    on_divergence: Literal["stop", "skip"] = "stop"
    validate: Literal["first", "always"] = "first"
    calibrate: Literal["auto", "all", "pairs", "label", "none"] = "auto"
    average_weights: bool = True
    ensemble: int = setting(4, ge=1, le=64)
    ensemble_processes: int = setting(0, ge=0, le=64)


@dataclass
class EvaluateConfig(_Table):
    """Evaluation and imputation.

    Attributes:
        num_samples: posterior samples per prediction or imputation.
        interval: mass of the central credible interval reported (and whose coverage is measured).
        batch_size: samples per forward pass.
        seed: seeds the posterior draws of evaluation, prediction and imputation (``evaluate``, ``impute`` and the
            report of ``run``; ``--seed`` overrides it), so that they give the same numbers every time on CPU.
    """

    num_samples: int = setting(100, ge=1, le=MAX_DRAWS)
    interval: float = setting(0.9, gt=0, lt=1)
    batch_size: int = setting(512, ge=1, le=100_000_000)
    seed: int = setting(0, ge=0, le=MAX_SEED)


TABLES = {DataConfig: "data", ModelConfig: "model", TrainConfig: "train", EvaluateConfig: "evaluate"}


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
    def from_dict(cls, d: dict, where: str = "<dict>") -> Config:
        cfg = cls()
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected tables data, model, train, evaluate; got {SHORT_REPR.repr(d)}")
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
        return cfg.check(where)

    def check(self, where: str = "<config>") -> Config:
        """Check every table (see :func:`check_table`); returns the configuration."""
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if f.name != "path":
                if type(sub) not in TABLES:
                    raise ConfigError(f"{where}: [{f.name}] must be a table, not {SHORT_REPR.repr(sub)}")
                sub.check(where)
        return self

    def differences(self, other: Config, tables=("data", "model", "train", "evaluate")) -> list[str]:
        """``"table.key = old -> new"`` for every field of ``tables`` whose value differs in ``other``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{t}.{k} = {SHORT_REPR.repr(v)} -> {SHORT_REPR.repr(theirs[t][k])}"
            for t in tables
            for k, v in mine[t].items()
            if theirs[t][k] != v
        ]

    @classmethod
    def load(cls, path, overrides=()) -> Config:
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

    def override(self, overrides) -> Config:
        """Apply ``table.key=value`` strings (values parsed as Python/TOML literals, else kept as strings)."""
        d = self.to_dict()
        for item in overrides:
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise ConfigError(f"override {item!r}: expected table.key=value, e.g. train.epochs=5")
            lhs, rhs = item.split("=", 1)
            table, key = lhs.strip().split(".", 1)
            try:
                value = ast.literal_eval(rhs.strip())
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                value = {"true": True, "false": False}.get(rhs.strip().lower(), rhs.strip())
            d.setdefault(table, {})[key] = value
        cfg = Config.from_dict(d, where=f"{self.path or '<config>'} with overrides")
        cfg.path = self.path
        return cfg
