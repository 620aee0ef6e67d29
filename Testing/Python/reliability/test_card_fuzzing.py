"""Property: whatever JSON a card holds, card_from_dict returns a ModelCard or raises ModelError, never anything
else (no TypeError, ValueError, KeyError, AttributeError that would surface as a traceback and exit 1)."""

from __future__ import annotations

import contextlib
import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meddl.errors import ModelError
from meddl.models import catalog
from meddl.models.card import ModelCard, card_from_dict
from meddl_testing import card_dict


def _valid_cards() -> list[dict]:
    segmenter = card_dict(labels=2, input={"channels": 1, "spacing": [1.5, 1.5, 2.0], "orientation": "RAS",
                                           "intensity": {"method": "range", "a_min": -57, "a_max": 164,
                                                         "b_min": 0, "b_max": 1, "clip": True}})
    segmenter["labels"][0].update(color="#9d6c89", terminology={"category": {"scheme": "SCT"}})
    segmenter["labels"][1]["color"] = [0, 128, 255]
    segmenter["output"] = {"mode": "threshold", "activation": "sigmoid", "threshold": 0.5, "fill_holes": True}
    segmenter["accuracy"] = [{"metric": "Dice", "value": 0.9, "data": "test"}]
    classifier = card_dict(task="classification", saliency={"target_layer": "features"})
    classifier["labels"] = [{"value": 0, "name": "normal"}, {"value": 1, "name": "lesion"}]
    classifier["input"] = {"channels": 1, "spatial_dims": 2, "size": [32, 32], "intensity": {"method": "zscore"}}
    enhancer = {"name": "d", "task": "enhancement", "license": "MIT", "input": {"channels": 1},
                "inference": {"roi_size": [64, 64, 64], "overlap": 0.5, "sw_batch_size": 4},
                "enhancement": {"kind": "superres", "factor": 4}}
    registrar = {"name": "r", "task": "registration", "license": "MIT", "input": {"channels": 1},
                 "registration": {"similarity": "lncc", "template_shape": [24, 24, 24]}}
    cards = [segmenter, classifier, enhancer, registrar]
    cards += [catalog.get_entry(i)["card"] for i in catalog.entry_ids() if "card" in catalog.get_entry(i)]
    for card in cards:
        assert isinstance(card_from_dict(copy.deepcopy(card)), ModelCard)
    return cards


VALID = _valid_cards()

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.integers(),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["one", "half", "#zzzzzz", "#ffffff", "RAS", "argmax", "threshold", "UNet",
                                     "segmentation", "classification", "range", "zscore", "1,1,1", ""]))
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)), max_leaves=8)


def _paths(value, prefix=()) -> list[tuple]:
    """Every path (dict keys and list indices) inside a card."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated_cards(draw) -> dict:
    card = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(card)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = card
        for part in path[:-1]:
            parent = parent[part] if isinstance(parent, (dict, list)) else None
        if not isinstance(parent, (dict, list)):
            continue
        if isinstance(parent, dict) and draw(st.booleans()) and draw(st.booleans()):
            del parent[path[-1]]  # a field left out
        else:
            parent[path[-1]] = draw(json_values)
    return card


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_cards())
def test_a_mutated_card_is_a_card_or_a_model_error(card):
    text = json.dumps(card)  # whatever the mutation, still a JSON document (NaN and Infinity as Python writes them)
    try:
        parsed = card_from_dict(json.loads(text), "model card fuzz.json")
    except ModelError as error:
        assert "\n" not in str(error) and str(error).startswith("model card fuzz.json")
        return
    assert isinstance(parsed, ModelCard)
    assert isinstance(parsed.channels, int) and parsed.channels >= 1
    assert 0 <= parsed.overlap < 1 and parsed.sw_batch_size >= 1
    assert parsed.out_channels >= 1
    assert all(0 <= c <= 1 for label in parsed.labels for c in label.color)


@settings(max_examples=60, deadline=None)
@given(json_values)
def test_any_json_document_is_a_card_or_a_model_error(document):
    with contextlib.suppress(ModelError):
        assert isinstance(card_from_dict(document), ModelCard)
