"""Supervised contrastive loss, Khosla et al. 2020 (https://arxiv.org/abs/2004.11362), the
``L_out`` form (mean over positives outside the log), which the paper found to train better than
``L_in``. Written here: torch and torchvision have none, and this one is a few lines.

In the reference-based detector the rows are the episode's prototypes (one per video, label = video
index) followed by the features of the foreground anchors (label = their video's index): each
object feature is pulled towards its own video's prototype and features, and pushed from the others.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Mean over anchors with at least one positive of
    ``-mean_{p in P(i)} log(exp(z_i.z_p / T) / sum_{a != i} exp(z_i.z_a / T))``.

    Args:
        features: ``(N, D)``; L2-normalised here, so ``z_i.z_a`` is a cosine similarity.
        labels: ``(N,)`` integer labels; ``P(i)`` = the other rows with ``i``'s label.
        temperature: ``T``; smaller sharpens the softmax over the batch.

    Returns:
        Scalar loss; 0 (still connected to ``features``, so ``backward`` works) when no row has a
        positive, e.g. a single object.
    """
    n = features.shape[0]
    if n < 2:  # no row can have a positive; also keeps logsumexp off an all -inf row
        return features.sum() * 0.0
    labels = labels.reshape(-1)
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)                # N, N
    positives = (labels[:, None] == labels[None, :]) & ~self_mask                     # N, N
    num_pos = positives.sum(1)                                                        # N
    z = F.normalize(features.float(), dim=1)                                          # N, D
    sim = z @ z.T / temperature                                                       # N, N
    # logsumexp subtracts the row max before exp, so a small T cannot overflow
    log_denominator = torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)  # N, 1
    log_prob = sim - log_denominator                                                  # N, N
    # where(), not a product with the mask: the diagonal must contribute nothing, not 0 * value
    mean_log_prob_pos = torch.where(positives, log_prob, 0.0).sum(1) / num_pos.clamp_min(1)  # N
    # masked mean instead of indexing rows with positives: no host-device sync, and 0 (with a
    # gradient path) when no row has a positive
    has_pos = num_pos > 0                                                             # N
    return torch.where(has_pos, -mean_log_prob_pos, 0.0).sum() / has_pos.sum().clamp_min(1)
