"""Length bins: the reference layout, log bins, the open top bin and bin lookup."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trail_scheduler.core import LengthBins


@st.composite
def open_top_bins(draw) -> LengthBins:
    """Arbitrary increasing edges from 0 with an open (infinite) top bin."""
    gaps = draw(st.lists(st.floats(0.01, 1e4), min_size=1, max_size=12))
    edges = [0.0]
    for gap in gaps:
        edges.append(edges[-1] + gap)
    return LengthBins((*edges, math.inf))


def test_uniform_reference_bins_match_the_paper():
    """10 bins over 0-512: width 51.2 and midpoints m_i = 25.6·(2i+1)."""
    bins = LengthBins.uniform()
    assert bins.count == 10
    assert bins.edges[0] == 0.0 and bins.edges[-1] == 512.0
    assert bins.widths == pytest.approx([51.2] * 10)
    assert bins.representatives == pytest.approx([25.6 * (2 * i + 1) for i in range(10)])


@pytest.mark.parametrize("open_top", [True, False])
def test_log_bins_are_geometric_between_first_edge_and_max(open_top):
    """Log bins: [0, first_edge), then a constant growth ratio up to max_length."""
    bins = LengthBins.log_spaced(count=12, max_length=8192.0, first_edge=16.0, open_top=open_top)
    assert bins.count == 12
    assert bins.edges[1] == 16.0
    finite = [e for e in bins.edges if math.isfinite(e)]
    assert finite[-1] == pytest.approx(8192.0)
    ratios = [b / a for a, b in zip(finite[1:], finite[2:])]
    assert ratios == pytest.approx([ratios[0]] * len(ratios))
    assert ratios[0] > 1
    assert math.isinf(bins.edges[-1]) == open_top


@given(open_top_bins())
def test_open_top_representative_is_finite_and_above_the_bin_below(bins):
    """The open top bin stands for a finite length beyond everything below it."""
    top = bins.representatives[-1]
    assert math.isfinite(top)
    assert top > bins.edges[-2]
    assert top > bins.representatives[-2]
    assert all(math.isfinite(w) and w > 0 for w in bins.widths)


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0), (51.19, 0), (51.2, 1), (255.0, 4), (511.9, 9), (512, 9), (10_000, 9), (math.inf, 9)],
)
def test_index_on_reference_bins(length, expected):
    """Lower edges are inclusive; at or past the top edge a length lands in the top bin."""
    assert LengthBins.uniform().index(length) == expected


@given(open_top_bins(), st.floats(0, 1e6))
def test_index_returns_the_bin_containing_the_length(bins, length):
    """index() agrees with the edges for any length, including far past the last finite edge."""
    i = bins.index(length)
    assert bins.edges[i] <= length < bins.edges[i + 1]


@pytest.mark.parametrize("length", [-1, math.nan])
def test_index_rejects_negative_and_nan(length):
    """A remaining length is never negative or NaN; those are caller bugs."""
    with pytest.raises(ValueError, match="length must be >= 0"):
        LengthBins.uniform().index(length)


def test_edges_round_trip_through_json_with_open_top():
    """to_list() is JSON-safe ("inf" for the open top) and from_list() restores the bins."""
    bins = LengthBins.log_spaced()
    text = json.dumps(bins.to_list(), allow_nan=False)
    assert json.loads(text)[-1] == "inf"
    assert LengthBins.from_list(json.loads(text)) == bins


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ((0, 1), "at least 2 bins"),
        ((1, 2, 3), "first bin edge must be 0"),
        ((0, 2, 2, 3), "strictly increasing"),
        ((0, 3, 2), "strictly increasing"),
        ((0, math.inf, 5), "must be finite"),
        ((0, math.nan, 5), "must be finite"),
    ],
)
def test_invalid_edges_are_rejected(edges, message):
    """Bad edges fail at construction with a message saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        LengthBins(edges)


def test_rebin_onto_the_same_bins_is_the_identity_and_onto_coarser_bins_sums_neighbours():
    fine, coarse = LengthBins.uniform(10, 512.0), LengthBins.uniform(5, 512.0)
    p = [0.05, 0.15, 0.1, 0.1, 0.2, 0.0, 0.1, 0.1, 0.15, 0.05]
    assert fine.rebin(p, fine) == pytest.approx(p)
    assert fine.rebin(p, coarse) == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.2])
    # Finer target: each bin's mass split evenly over the halves it covers.
    assert coarse.rebin([1, 0, 0, 0, 0], fine) == pytest.approx([0.5, 0.5] + [0] * 8)


def test_rebin_puts_mass_past_the_targets_last_edge_into_its_top_bin():
    wide, narrow = LengthBins.uniform(4, 1024.0), LengthBins.uniform(4, 512.0)
    assert wide.rebin([0, 0, 0.5, 0.5], narrow) == pytest.approx([0, 0, 0, 1])
    with pytest.raises(ValueError, match="expected 4 probabilities"):
        wide.rebin([1.0], narrow)


@given(open_top_bins(), open_top_bins(), st.lists(st.floats(0, 1), min_size=13, max_size=13))
def test_rebin_keeps_the_mass(source, target, weights):
    p = weights[: source.count]
    assert float(source.rebin(p, target).sum()) == pytest.approx(sum(p), abs=1e-9)
    assert (source.rebin(p, target) >= 0).all()
