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
