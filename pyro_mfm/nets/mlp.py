"""Multilayer perceptrons, shaped as in the paper (Linear-ReLU-Dropout-Linear-ReLU)."""

from __future__ import annotations

from torch import nn


def mlp(sizes, dropout: float = 0.0, final_activation: bool = False) -> nn.Sequential:
    """``Linear(sizes[0], sizes[1]) - ReLU - Dropout - ... - Linear(sizes[-2], sizes[-1])`` (+ ReLU if asked).

    Works on any number of leading batch dimensions, so that Pyro's vectorized particles pass through unchanged.
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        last = i == len(sizes) - 2
        if not last or final_activation:
            layers.append(nn.ReLU(inplace=True))  # on the Linear's own output, which its backward does not read
            if not last and dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class FactorNet(nn.Module):
    """G: a factor z to its features f = ReLU(W2 Dropout(ReLU(W1 z))), as the paper's G_y and G_m."""

    def __init__(self, z_dim: int, f_dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = mlp([z_dim, hidden, f_dim], dropout, final_activation=True)

    def forward(self, z):
        return self.net(z)
