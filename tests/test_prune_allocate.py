"""Width allocation: budget, multiple and minimum hold; the choice is optimal; layers compare."""

from __future__ import annotations

import itertools

import pytest
import torch

from olmo_flex_ext.errors import UserError
from olmo_flex_ext.prune.allocate import (
    allocate_widths,
    check_widths,
    keep_indices,
    top_neurons,
    uniform_widths,
)
from olmo_flex_ext.prune.scores import ImportanceScores


def scores_of(widths_per_layer, seed=0, scale=None):
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, widths in enumerate(widths_per_layer):
        s = [torch.rand(w, generator=g) ** 3 * (1 + i) for w in widths]  # skewed, depth-dependent
        if scale is not None:
            s = [x * scale[i] for x in s]
        layers.append(s)
    return ImportanceScores(layers, {"model_fingerprint": "x"})


def kept(scores: ImportanceScores, widths, normalize="layer"):
    norm = scores.normalized(normalize)
    return sum(
        float(norm[i][e][top_neurons(norm[i][e], w)].sum())
        for i, layer in enumerate(widths)
        for e, w in enumerate(layer)
    )


@pytest.mark.parametrize(
    "budget_width,multiple,min_width", [(200, 32, 64), (96, 16, 16), (300, 64, 128)]
)
def test_allocation_respects_budget_multiple_minimum(budget_width, multiple, min_width):
    original = [[512, 384, 320]] * 6
    scores = scores_of(original, seed=budget_width)
    budget = budget_width * 6 * 2  # experts 1 and 2 together
    widths = allocate_widths(scores, budget, multiple=multiple, min_width=min_width)
    pruned = [w for layer in widths for w in layer[1:]]
    assert all(layer[0] == 512 for layer in widths)  # public expert untouched
    assert sum(pruned) <= budget
    assert sum(pruned) > budget - multiple  # the budget is used up to less than one chunk
    assert all(
        w % multiple == 0 or w == o
        for layer, orig in zip(widths, original)
        for w, o in zip(layer[1:], orig[1:])
    )
    assert all(w >= min_width for w in pruned)
    assert len(set(pruned)) > 1  # importance gives different widths to different layers/experts


def test_allocation_is_optimal_against_exhaustive_search():
    original = [[64, 64]] * 3
    scores = scores_of(original, seed=7)
    budget, multiple = 96, 16
    widths = allocate_widths(scores, budget, experts=[1], multiple=multiple, min_width=16)
    choices = range(16, 65, 16)
    best = max(
        kept(scores, [[64, w] for w in combo])
        for combo in itertools.product(choices, repeat=3)
        if sum(combo) <= budget
    )
    assert kept(scores, widths) == pytest.approx(best, rel=1e-12)


def test_layer_normalisation_makes_layers_comparable():
    original = [[64, 64]] * 2
    # same importance pattern in both layers, but layer 1's activations are 1000x larger
    base = scores_of([[64, 64]], seed=3).scores[0]
    scores = ImportanceScores([base, [s * 1000 for s in base]])
    fair = allocate_widths(scores, 64, multiple=16, min_width=16)
    raw = allocate_widths(scores, 64, multiple=16, min_width=16, normalize="none")
    assert fair == [[64, 32], [64, 32]]
    assert raw == [[64, 16], [64, 48]]
    del original


def test_budget_below_minimum_is_refused():
    scores = scores_of([[64, 64]] * 4)
    with pytest.raises(UserError, match="below"):
        allocate_widths(scores, 4 * 16 - 1, multiple=16, min_width=16)


def test_uniform_widths_and_their_errors():
    original = [[256, 128]] * 2
    assert uniform_widths(original, [256, 64]) == [[256, 64], [256, 64]]
    for bad, match in [
        ([256, 200], "larger than its original"),
        ([256, 0], "not a positive"),
        ([256], "one width per expert"),
        ([128, 64], "public expert"),
    ]:
        with pytest.raises(UserError, match=match):
            uniform_widths(original, bad)
    uniform_widths(original, [128, 64], prune_public=True)
    with pytest.raises(UserError, match="model has 2"):
        check_widths(original, [[256, 64]] * 3)


def test_keep_indices_are_the_top_neurons_in_original_order():
    s = torch.tensor([0.1, 5.0, 0.3, 4.0, 4.0, 0.0])
    scores = ImportanceScores([[torch.ones(2), s]])
    ((k0, k1),) = keep_indices(scores, [[2, 3]])
    assert k0.tolist() == [0, 1]
    assert k1.tolist() == [1, 3, 4]
