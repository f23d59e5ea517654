"""Hand-written plain-PyTorch losses of the MFM: the same networks (the modules of an ``MFM``) and the same terms as
:class:`pyro_mfm.infer.objective.Objective`, with no Pyro in between. The benchmark checks that they give the same
value (same parameters, same random draws) before timing them, so the comparison measures only the cost of the
probabilistic-programming layer.

``elbo_loss`` is what ``TraceMeanField_ELBO`` computes for the MFM (analytic KL of every Gaussian factor, the
reconstruction and label log-likelihoods at one reparameterised draw, in the guide's draw order z_y, z_a_1..M)
plus ``alpha`` times the discriminative term, computed from the same encoder features. ``wae_loss`` is the paper's
objective at the deterministic codes (a missing modality's z_a,m a draw of its prior) plus the minibatch MMDs
(the prior draws in the order z_y, z_a_1..M).
"""

from __future__ import annotations

import torch
import torch.distributions as td
from torch.nn.functional import softplus

from pyro_mfm.infer.objective import mmd
from pyro_mfm.nets import product_of_experts


def inputs(mfm, batch):
    """Standardised inputs, zero where missing or padded; and each sequence modality's real steps."""
    x, steps = {}, {}
    for m in mfm.names:
        present = batch.present[m]
        if mfm.schema[m].is_sequence:
            steps[m] = batch.steps[m] & present[:, None]
            keep = steps[m].unsqueeze(-1)
        else:
            steps[m] = None
            keep = present.unsqueeze(-1)
        x[m] = (batch.x[m] - mfm.p_x[m].mean) / mfm.p_x[m].std * keep.to(batch.x[m].dtype)
    return x, steps


def log_lik_x(mfm, m, loc_std, batch):
    """lambda_x,m (per element with x_reduction = "mean") * log p(x_m | loc), summed over the real steps and
    features of the samples where m is present."""
    p = mfm.p_x[m]
    scale = softplus(p.raw_scale) + 1e-3 if p.learned_scale else p.fixed_scale
    lp = td.Normal(p.mean + p.std * loc_std, p.std * scale).log_prob(batch.x[m])
    if mfm.schema[m].is_sequence:
        lp = (lp * batch.steps[m].unsqueeze(-1).to(lp.dtype)).sum((-2, -1))
    else:
        lp = lp.sum(-1)
    return mfm.model.x_weight[m] * (lp * batch.present[m].to(lp.dtype)).sum()


def log_lik_y(mfm, f_y, y, y_present):
    """log p(y | D(f_y)) per sample (masked by ``y_present``)."""
    D = mfm.D
    out = D.head(f_y)
    if D.kind == "categorical":
        lp = td.Categorical(logits=out).log_prob(y)
    elif D.kind == "bernoulli":
        lp = td.Bernoulli(logits=out).log_prob(y).sum(-1)
    else:
        loc, scale = D.mean + D.std * out, D.scale()
        base = td.Normal if D.kind == "normal" else td.Laplace
        lp = base(loc, scale).log_prob(y).sum(-1)
    return lp * y_present.to(lp.dtype)


def reconstruction(mfm, batch, f_y, z_a: dict, decode=None) -> torch.Tensor:
    """-(sum_m lambda_x,m log p(x_m | F_m(f_y, G_m(z_a,m))) + lambda_y log p(y | D(f_y))), summed over the batch."""
    decode = decode or (lambda m, f: mfm.model.F[m](f))
    loss = f_y.new_zeros(())
    for m in mfm.names:
        f = torch.cat([f_y, mfm.model.G[m](z_a[m])], -1)
        loss = loss - log_lik_x(mfm, m, decode(m, f), batch)
    return loss - mfm.config.lambda_y * log_lik_y(mfm, f_y, batch.y, batch.y_present).sum()


def recorded(mfm, batch, z_y) -> torch.Tensor:
    """sum over the batch and the modalities that training lacks of log p(r_m | z_y), r_m whether m is recorded,
    where it is known (present or absent)."""
    names = mfm.model.recorded
    if not names:
        return z_y.new_zeros(())
    present = torch.stack([batch.present[m] for m in names], -1)
    known = present | torch.stack([batch.absent[m] for m in names], -1)
    lp = td.Bernoulli(logits=mfm.model.R(z_y)).log_prob(present.to(z_y.dtype))
    return (lp * known.to(lp.dtype)).sum()


def experts(mfm, h, batch, with_label: bool):
    eta, lam, masks = [], [], []
    for m in mfm.names:
        e, p = mfm.guide.q_y[m](h[m])
        eta.append(e), lam.append(p), masks.append(batch.present[m])
    for m in mfm.guide.absent_names:  # a known absence's expert, where the model observes it (model.missingness)
        e, p = mfm.guide.q_absent[m]((len(batch),))
        eta.append(e), lam.append(p), masks.append(batch.absent[m])
    if with_label:
        e, p = mfm.guide.q_label(mfm.guide.y_in(batch.y))
        eta.append(e), lam.append(p), masks.append(batch.y_present)
    return eta, lam, masks


def elbo_loss(mfm, batch) -> torch.Tensor:
    """(-ELBO + alpha * discriminative term) / B for the MFM with a product-of-experts or MFN encoder of z_y."""
    cfg = mfm.config
    x, steps = inputs(mfm, batch)
    h = {m: mfm.guide.trunk[m](x[m], steps[m]) for m in mfm.names}
    if cfg.fusion == "mfn":
        loc, raw = mfm.guide.q_y_fused(mfm.guide.fusion(x, steps)).chunk(2, -1)
        q_y = td.MultivariateNormal(loc, scale_tril=torch.diag_embed(softplus(raw) + 1e-4))
        disc_z_y = loc
    else:
        eta, lam, masks = experts(mfm, h, batch, with_label=True)
        q_y = product_of_experts(eta, lam, masks)
        disc_z_y = product_of_experts(eta[:-1], lam[:-1], masks[:-1]).mean
    prior = td.MultivariateNormal(torch.zeros_like(mfm.model._eye[0]), scale_tril=mfm.model._eye)
    z_y = q_y.rsample()
    loss = td.kl_divergence(q_y, prior).sum()
    z_a = {}
    for m in mfm.names:
        loc, scale = mfm.guide.q_a[m](torch.cat([h[m], z_y], -1))
        present = batch.present[m].unsqueeze(-1)
        q_a = td.Normal(torch.where(present, loc, 0.0), torch.where(present, scale, 1.0))
        z_a[m] = q_a.rsample()
        kl = td.kl_divergence(q_a, td.Normal(0.0, 1.0)).sum(-1)
        loss = loss + (kl * batch.present[m].to(kl.dtype)).sum()
    loss = loss + reconstruction(mfm, batch, mfm.model.G_y(z_y), z_a) - recorded(mfm, batch, z_y)
    if mfm.alpha:
        loss = loss - mfm.alpha * log_lik_y(mfm, mfm.model.G_y(disc_z_y), batch.y, batch.y_present).sum()
    return loss / len(batch)


def mmd_terms(mfm, batch, z_y, z_a: dict) -> torch.Tensor:
    """B * sum_factors lambda_mmd * MMD(codes, N(0, I) draws), the draws in the order z_y, z_a_1..M."""
    cfg = mfm.config
    lam = cfg.lambda_mmd if isinstance(cfg.lambda_mmd, dict) else {f: cfg.lambda_mmd for f in ["z_y", *mfm.names]}
    loss = z_y.new_zeros(())
    for factor in ["z_y", *mfm.names]:
        code = z_y if factor == "z_y" else z_a[factor][batch.present[factor]]
        if lam[factor] and len(code) > 1:
            prior = torch.randn_like(code)
            loss = loss + len(batch) * float(lam[factor]) * mmd(
                code, prior, cfg.mmd_kernel, cfg.mmd_scale, cfg.mmd_estimator
            )
    return loss


def private_codes(mfm, batch, h, z_y) -> dict:
    """The ``wae`` guide's z_a,m: the encoder's code where x_m is observed, a draw of the prior elsewhere."""
    z_a = {}
    for m in mfm.names:
        loc, scale = mfm.guide.q_a[m](torch.cat([h[m], z_y], -1))
        present = batch.present[m].unsqueeze(-1)
        draw = td.Normal(torch.where(present, loc, 0.0), torch.where(present, scale, 1.0)).sample()
        z_a[m] = torch.where(present, loc, draw)
    return z_a


def wae_codes(mfm, batch, h, x, steps):
    z_y = mfm.guide.q_y_fused(mfm.guide.fusion(x, steps))
    return z_y, private_codes(mfm, batch, h, z_y)


def wae_loss(mfm, batch) -> torch.Tensor:
    """The paper's objective / B: -log-likelihood at the deterministic codes + the minibatch MMDs (MFN fusion)."""
    x, steps = inputs(mfm, batch)
    h = {m: mfm.guide.trunk[m](x[m], steps[m]) for m in mfm.names}
    z_y, z_a = wae_codes(mfm, batch, h, x, steps)
    loss = reconstruction(mfm, batch, mfm.model.G_y(z_y), z_a)
    return (loss + mmd_terms(mfm, batch, z_y, z_a)) / len(batch)


def loss_fn(mfm):
    """The plain loss matching ``mfm.config.objective``."""
    return wae_loss if mfm.config.objective == "wae" else elbo_loss
