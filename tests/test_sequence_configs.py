"""The shipped sequence configurations load, build their model on data of the shapes they expect, and train."""

from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_mfm.config import Config
from pyro_mfm.data.dataset import from_arrays
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.infer.objective import Objective
from pyro_mfm.model import MFM

MODELS = Path(__file__).resolve().parents[1] / "models"


def mosi_like(n=40, T=20, seed=0):
    """Random data of CMU-MOSI's shapes: text 300, audio 5, vision 20, T = 20, front-padded, sentiment in [-3, 3]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, n)
    steps = np.arange(T)[None] >= (T - lengths)[:, None]
    feats = {
        m: rng.standard_normal((n, T, d)).astype(np.float32) * steps[..., None]
        for m, d in (("text", 300), ("audio", 5), ("vision", 20))
    }
    y = np.clip(rng.standard_normal(n) * 1.5, -3, 3)
    return from_arrays(feats, y, steps={m: steps for m in feats})


@pytest.mark.parametrize("name, lambda_mmd, batch", [("mfm-paper-mosi", 1.0, 32), ("mfm-mmsa-mosi", 100.0, 64)])
def test_mosi_configurations_build_and_take_a_training_step(name, lambda_mmd, batch):
    cfg = Config.load(MODELS / f"{name}.toml")
    assert cfg.model.objective == "wae" and cfg.model.fusion == "mfn" and cfg.model.sequence_net == "lstm"
    assert cfg.model.lambda_mmd == lambda_mmd and cfg.train.batch_size == batch and cfg.train.lr == 1e-3
    assert cfg.model.mfn_memory == 64 and cfg.train.select_metric == "mae"
    data = mosi_like()
    pyro.set_rng_seed(0)
    mfm = MFM(data.schema, cfg.model, feature_statistics(data["train"]))
    assert [mfm.guide.fusion.lstm[m].hidden_size for m in ("text", "audio", "vision")] == [
        cfg.model.lstm_hidden[m] for m in ("text", "audio", "vision")
    ]
    obj = Objective(mfm)
    opt = torch.optim.Adam(mfm.parameters(), lr=cfg.train.lr)
    b = data["train"][np.arange(32)]
    before = {k: v.detach().clone() for k, v in mfm.state_dict().items()}
    loss = obj(b)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [k for k, v in mfm.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("guide.fusion.") for k in changed) and any(k.startswith("model.F.") for k in changed)
    x = obj.mfm.codes(b.without_labels())
    assert x["z_y"].shape == (32, 32 if name == "mfm-paper-mosi" else 80)


def test_paper_mosi_configuration_holds_the_authors_sizes():
    m = Config.load(MODELS / "mfm-paper-mosi.toml").model
    assert m.lstm_hidden == {"text": 88, "audio": 64, "vision": 48}
    assert (m.z_y_dim, m.z_a_dim) == (32, {"text": 32, "audio": 8, "vision": 80})
    assert (m.f_y_dim, m.f_a_dim) == (16, {"text": 88, "audio": 8, "vision": 8})
    assert m.lambda_x == {"text": 1.0, "audio": 0.01, "vision": 0.5}
    assert m.label_likelihood == "laplace"


@pytest.mark.parametrize("name", ["mfm-paper-mosi", "mfm-mmsa-mosi"])
def test_mosi_configurations_weigh_mean_squared_errors_and_the_l1_loss_as_the_paper(name):
    """The authors' loss: lambda_x,m * the mean over x_m's T x d elements of the squared (standardised) error, plus
    |y - y_hat|. As likelihood terms: the weighted negative log densities equal these plus constants."""
    from pyro import poutine

    cfg = Config.load(MODELS / f"{name}.toml")
    data = mosi_like()
    pyro.set_rng_seed(0)
    mfm = MFM(data.schema, cfg.model, feature_statistics(data["train"])).eval()
    b = data["train"][np.arange(16)]
    tr = poutine.trace(poutine.replay(mfm.model, trace=poutine.trace(mfm.guide).get_trace(b))).get_trace(b)
    rng = np.random.default_rng(1)
    for m, d in (("text", 300), ("audio", 5), ("vision", 20)):
        site, p = tr.nodes[f"x_{m}"], mfm.p_x[m]
        assert site["scale"] == pytest.approx(cfg.model.lambda_x[m] / (20 * d))

        def neg_log_p_minus_squared_error(x):
            se = (((x - site["fn"].mean) / p.std) ** 2 * b.steps[m].unsqueeze(-1)).sum((-2, -1))
            return -site["fn"].log_prob(x) - se

        other = b.x[m] + torch.as_tensor(rng.standard_normal(b.x[m].shape), dtype=torch.float32)
        torch.testing.assert_close(neg_log_p_minus_squared_error(b.x[m]), neg_log_p_minus_squared_error(other))
    y_site = tr.nodes["y"]
    torch.testing.assert_close(-y_site["fn"].log_prob(b.y), (b.y - y_site["fn"].mean).abs().sum(-1) + np.log(2.0))
    assert not any(n.startswith("model.D.raw_scale") for n, _ in mfm.named_parameters())


@pytest.mark.parametrize("ablation", ["no_shared", "shared_only", "discriminative"])
def test_pom_configuration_ablations_are_one_flag_away(ablation):
    extra = ["model.fusion='poe'"] if ablation == "no_shared" else []  # the MFN encodes z_y, which it removes
    cfg = Config.load(MODELS / "mfm-pom.toml", [f"model.ablation='{ablation}'"] + extra)
    rng = np.random.default_rng(0)
    feats = {"audio": rng.standard_normal((24, 20, 43)), "video": rng.standard_normal((24, 20, 41))}
    data = from_arrays(feats, rng.uniform(1, 7, (24, 17)))
    pyro.set_rng_seed(0)
    mfm = MFM(data.schema, cfg.model, feature_statistics(data["train"]))
    loss = Objective(mfm)(data["train"][np.arange(24)])
    loss.backward()
    assert torch.isfinite(loss)


# MMSA's MFM on MOSI (thuiar/MMSA, models/singleTask/MFM.py with its MOSI configuration), parameters by part, as
# counted from its modules: what benchmarks/setups.reference_parameter_counts must give for mfm-mmsa-mosi.toml
MMSA_PARTS = {
    "encoders": 171_296,
    "MFN": 448_320,
    "z_y head": 28_240,
    "factor nets": 23_392,
    "decoders": 290_517,
    "label head": 4_225,
}
MMSA_MFN_OUTPUT_HEAD = 45_313  # the MFN's own output head, in MMSA's module but never read by its MFM


def test_mmsa_configuration_has_mmsas_layers_and_parameter_count():
    import sys

    sys.path.insert(0, str(MODELS.parent))
    from benchmarks import setups

    cfg = Config.load(MODELS / "mfm-mmsa-mosi.toml")
    assert setups.reference_parameter_counts(cfg, setups.MOSI_DIMS) == MMSA_PARTS
    data = mosi_like()
    mfm = MFM(data.schema, cfg.model, feature_statistics(data["train"]))
    ours = setups.parameter_counts(mfm)
    assert sum(ours.values()) == sum(p.numel() for p in mfm.parameters())
    # the parts built alike have MMSA's counts exactly; the encoders differ in that q(z_a,m | x_m, z_y) reads z_y
    for part in ("MFN", "z_y head", "factor nets", "decoders", "label head"):
        assert ours[part] == MMSA_PARTS[part], part
    assert abs(sum(ours.values()) / (sum(MMSA_PARTS.values()) + MMSA_MFN_OUTPUT_HEAD) - 1) < 0.10
    g = mfm.guide
    assert [g.trunk[m].lstm.hidden_size for m in ("text", "audio", "vision")] == [64, 80, 80]
    assert [len([x for x in g.q_a[m].net if isinstance(x, torch.nn.Linear)]) for m in g.q_a] == [1, 1, 1]


def test_part_widths_default_to_hidden_and_bad_tables_are_named():
    from pyro_mfm.config import ConfigError

    data = mosi_like()
    stats = feature_statistics(data["train"])
    base = Config.load(MODELS / "mfm-pom.toml").model
    cfg = Config.load(
        MODELS / "mfm-pom.toml",
        [
            "model.factor_hidden={'z_y': 5, 'text': 6, 'audio': 0, 'vision': 7}",
            "model.label_hidden=9",
            "model.mfn_hidden=11",
        ],
    )
    mfm = MFM(data.schema, cfg.model, stats)
    assert mfm.model.G_y.net[0].out_features == 5
    assert [mfm.model.G[m].net[0].out_features for m in ("text", "audio", "vision")] == [6, base.hidden, 7]
    assert mfm.model.D.head[0].out_features == 9
    assert mfm.guide.fusion.gate2[0].out_features == 11
    assert mfm.guide.trunk["text"].out_dim == base.hidden  # encoder_hidden = 0: model.hidden
    bad = Config.load(MODELS / "mfm-pom.toml", ["model.mfn_hidden={'attention': 4, 'gates': 4}"])
    with pytest.raises(ConfigError, match=r"model\.mfn_hidden: .*expected exactly \['attention', 'propose'"):
        MFM(data.schema, bad.model, stats)


def test_wae_codes_z_y_alone_and_loads_a_checkpoint_that_held_a_scale():
    cfg = Config.load(MODELS / "mfm-paper-mosi.toml")
    data = mosi_like()
    stats = feature_statistics(data["train"])
    pyro.set_rng_seed(0)
    mfm = MFM(data.schema, cfg.model, stats)
    k = cfg.model.z_y_dim
    assert mfm.guide.q_y_fused.out_features == k
    b = data["train"][np.arange(8)].without_labels()
    q = mfm.posterior_z_y(b)
    torch.testing.assert_close(q.mean, mfm.codes(b)["z_y"])
    assert float(q.stddev.max()) <= 1e-6
    # a checkpoint of the layout before: code rows then scale rows; the code rows are kept
    state = mfm.state_dict()
    w, bias = state["guide.q_y_fused.weight"], state["guide.q_y_fused.bias"]
    state["guide.q_y_fused.weight"] = torch.cat([w, torch.randn_like(w)])
    state["guide.q_y_fused.bias"] = torch.cat([bias, torch.randn_like(bias)])
    again = MFM(data.schema, cfg.model, stats)
    again.load_state_dict(state)
    torch.testing.assert_close(again.guide.q_y_fused.weight, w)
    # the ELBO's MFN guide keeps loc and scale, and loads its own checkpoint as it is
    elbo = Config.load(MODELS / "mfm-paper-mosi.toml", ["model.objective='elbo'"])
    one = MFM(data.schema, elbo.model, stats)
    assert one.guide.q_y_fused.out_features == 2 * k
    other = MFM(data.schema, elbo.model, stats)
    other.load_state_dict(one.state_dict())
    torch.testing.assert_close(other.guide.q_y_fused.weight, one.guide.q_y_fused.weight)


def test_a_checkpoint_written_before_sequence_mean_rebuilds_its_networks_without_it():
    from pyro_mfm.infer.checkpoint import stored_config

    cfg = Config.load(MODELS / "mfm-pom.toml")
    assert cfg.model.sequence_mean  # today's default
    old = cfg.to_dict()
    del old["model"]["sequence_mean"]
    assert stored_config({"config": old, "path": "old.pt"}).model.sequence_mean is False
    assert "sequence_mean" not in old["model"]  # the payload is not modified
    assert stored_config({"config": cfg.to_dict(), "path": "new.pt"}).model.sequence_mean is True
