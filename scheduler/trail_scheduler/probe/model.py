"""The length probe: a two-layer MLP from one hidden state to length-bin logits."""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_HIDDEN_UNITS = 512


class LengthProbe(nn.Module):
    """``Linear(hidden→hidden_units) → ReLU → Linear(hidden_units→K)``.

    ``forward`` maps hidden states ``[..., hidden_size]`` to logits ``[..., K]``;
    :meth:`probabilities` applies the softmax the refinement consumes.
    """

    def __init__(self, hidden_size: int, num_bins: int, hidden_units: int = DEFAULT_HIDDEN_UNITS) -> None:
        super().__init__()
        sizes = (("hidden_size", hidden_size, 1), ("num_bins", num_bins, 2), ("hidden_units", hidden_units, 1))
        for name, value, minimum in sizes:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        self.fc1 = nn.Linear(hidden_size, hidden_units)
        self.fc2 = nn.Linear(hidden_units, num_bins)

    @property
    def hidden_size(self) -> int:
        return self.fc1.in_features

    @property
    def hidden_units(self) -> int:
        return self.fc1.out_features

    @property
    def num_bins(self) -> int:
        return self.fc2.out_features

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(hidden_states)))

    def probabilities(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Softmax over the bins (float32 for numerical safety whatever the input dtype)."""
        return torch.softmax(self.forward(hidden_states).float(), dim=-1)
