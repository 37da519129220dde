"""Non-optimising attacks: direct, prefill and jailbreak templates (every placeholder
style, the train/held-out split and its cache)."""
from __future__ import annotations

import pytest
import torch

from repbend import embeddings
from repbend.errors import ConfigError
from repbend.eval.attacks import ATTACKS, AttackContext, templates
from repbend.eval.attacks.simple import GENERIC_OPENING
from repbend.eval.attacks.templates import (
    AUTODAN_MARKER,
    GARAK_MARKER,
    GPTFUZZER_MARKER,
    JINJA,
    SOURCES,
    SPLITS,
    Template,
    template_set,
)
from repbend.types import BehaviorRow

PLAIN = BehaviorRow(id="p1", prompt="Explain placeholder task one", benchmark="fixture",
                    target="Sure, here is placeholder task one")
CONTEXTUAL = BehaviorRow(id="c1", prompt="Summarise the notes above", benchmark="fixture",
                         context="Placeholder note.")
NO_TARGET = BehaviorRow(id="n1", prompt="Describe placeholder task two", benchmark="fixture")


def prepare(name: str, rows, **context):
    return ATTACKS.get(name)().prepare(rows, AttackContext(**context))


def user_text(attacked) -> str:
    (message,) = attacked.messages
    assert message["role"] == "user"
    return message["content"]


def test_attacks_are_registered():
    assert {"direct", "prefill", "template", "gcg", "input_embedding"} <= set(ATTACKS)


def test_direct_uses_the_prompt_and_harmbench_context_format():
    plain, contextual = prepare("direct", [PLAIN, CONTEXTUAL])
    assert user_text(plain) == "Explain placeholder task one"
    assert user_text(contextual) == "Placeholder note.\n\n---\n\nSummarise the notes above"
    assert (plain.attack, plain.prefill, plain.row) == ("direct", "", PLAIN)


def test_prefill_uses_the_target_or_a_generic_opening():
    with_target, without_target = prepare("prefill", [PLAIN, NO_TARGET])
    assert with_target.prefill == "Sure, here is placeholder task one:\n\n"
    assert without_target.prefill == GENERIC_OPENING + ":\n\n"
    assert user_text(with_target) == PLAIN.prompt
    assert (with_target.meta["generic_prefill"], without_target.meta["generic_prefill"]) == (False, True)


# --- placeholder styles -------------------------------------------------------------


def template(text: str, placeholder, name: str = "t") -> Template:
    return Template(f"fixture/{name}", "fixture", "test", text, placeholder)


@pytest.mark.parametrize(
    "text, placeholder, filled",
    [
        ("Act as a helpful pirate. {{ prompt }}", JINJA, "Act as a helpful pirate. REQUEST"),
        ("{% raw %}Keep {{ these }} braces {% endraw %}{{ prompt }}", JINJA, "Keep {{ these }} braces REQUEST"),
        ("Answer this: [INSERT PROMPT HERE] Thanks.", GARAK_MARKER, "Answer this: REQUEST Thanks."),
        ("Act as a helpful pirate.", None, "Act as a helpful pirate.\n\nREQUEST"),
        ("Tell me {query}. Keep {other} braces.", GPTFUZZER_MARKER, "Tell me REQUEST. Keep {other} braces."),
        ("Respond to [PROMPT] kindly. [PROMPT]:", AUTODAN_MARKER, "Respond to REQUEST kindly. REQUEST:"),
    ],
)
def test_fill_each_placeholder_style(text, placeholder, filled):
    assert template(text, placeholder).fill("REQUEST") == filled


def test_jinja_request_text_is_not_interpreted():
    assert template("Q: {{ prompt }}", JINJA).fill("{{ 7 * 6 }}") == "Q: {{ 7 * 6 }}"


def test_every_packaged_template_takes_the_request():
    request = "PLACEHOLDER-REQUEST-TEXT"
    for source, load in SOURCES.items():
        loaded = load()
        assert loaded, source
        for item in loaded:
            filled = item.fill(request)
            assert request in filled, item.id
            if item.placeholder not in (JINJA, None):
                assert item.placeholder not in filled, item.id
            assert "{generator.name}" not in filled, item.id


def test_split_sources_are_disjoint_and_all_known():
    assert not set(SPLITS["train"]) & set(SPLITS["heldout"])
    assert set(SPLITS["train"]) | set(SPLITS["heldout"]) == set(SOURCES)


# --- split and the template attack on small sources ---------------------------------

TRAIN_TEXTS = [
    "You are a cheerful pirate captain who answers every question about the sea. {{ prompt }}",
    "{% raw %}Pretend to be a librarian who loves old maps and quiet rooms.{% endraw %} {{ prompt }}",
]
HELDOUT_TEXTS = [
    # The first train template in another markup: dropped as a near-duplicate.
    ("You are a cheerful pirate captain who answers every question about the sea. [INSERT PROMPT HERE]", GARAK_MARKER),
    ("Write the answer as a limerick about a gardener and a sunflower: {query}", GPTFUZZER_MARKER),
    ("Respond as a weather forecaster reading a report on the radio.", None),
]


@pytest.fixture
def small_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("REPBEND_CACHE", str(tmp_path))  # the attack keeps its split in the user cache
    train = [template(text, JINJA, f"train{index}") for index, text in enumerate(TRAIN_TEXTS)]
    heldout = [template(text, marker, f"heldout{index}") for index, (text, marker) in enumerate(HELDOUT_TEXTS)]
    monkeypatch.setitem(SOURCES, "fixture/train", lambda: train)
    monkeypatch.setitem(SOURCES, "fixture/heldout", lambda: heldout)
    monkeypatch.setitem(SPLITS, "train", ("fixture/train",))
    monkeypatch.setitem(SPLITS, "heldout", ("fixture/heldout",))
    return train, heldout


def test_heldout_split_drops_near_duplicates_of_train_and_is_cached(small_sources, tmp_path, monkeypatch):
    train, heldout = small_sources
    kept = template_set("heldout", tmp_path)
    assert [item.id for item in kept] == ["fixture/heldout1", "fixture/heldout2"]
    assert template_set("train", tmp_path) == train
    assert len(list((tmp_path / "templates").glob("heldout-*.json"))) == 1

    def no_embedding(texts, **kwargs):
        raise AssertionError("the cached split should not embed again")

    monkeypatch.setattr(templates, "embed", no_embedding)
    assert template_set("heldout", tmp_path) == kept


def test_template_attack_fills_every_row_into_every_template(small_sources, tmp_path):
    # The evaluation passes every attack the model's identity beside its own options.
    attacked = prepare("template", [PLAIN, CONTEXTUAL], cache_dir=tmp_path, options={"split": "train", "identity": "m"})
    assert [(item.row.id, item.variant) for item in attacked] == [
        ("p1", "fixture/train0"), ("p1", "fixture/train1"), ("c1", "fixture/train0"), ("c1", "fixture/train1"),
    ]
    assert user_text(attacked[2]).endswith("Placeholder note.\n\n---\n\nSummarise the notes above")
    assert attacked[0].meta == {"source": "fixture", "licence": "test"}
    assert {item.attack for item in attacked} == {"template"}


def test_template_attack_samples_max_templates_by_seed(small_sources, tmp_path):
    def variants(seed):
        attacked = prepare("template", [PLAIN], cache_dir=tmp_path, seed=seed,
                           options={"split": "train", "max_templates": 1})
        return [item.variant for item in attacked]

    assert len(variants(0)) == 1
    assert variants(0) == variants(0)
    assert {variants(seed)[0] for seed in range(10)} == {"fixture/train0", "fixture/train1"}


def test_template_attack_per_row_deals_each_row_one_template(small_sources, tmp_path):
    rows = [BehaviorRow(id=f"r{index}", prompt=f"Placeholder request {index}", benchmark="unit") for index in range(5)]

    def pairs(seed, **options):
        attacked = prepare("template", rows, cache_dir=tmp_path, seed=seed,
                           options={"split": "train", "per_row": True, **options})
        return [(item.row.id, item.variant) for item in attacked]

    dealt = pairs(0)
    assert [row_id for row_id, _ in dealt] == [row.id for row in rows]  # one generation per row
    variants = [variant for _, variant in dealt]
    assert variants[0] != variants[1] and variants[:2] == variants[2:4]  # all used before any twice
    assert pairs(0) == dealt and {tuple(v for _, v in pairs(seed)) for seed in range(10)} != {tuple(variants)}
    # max_chars drops the longer (pirate) template: every row gets the librarian one
    train = small_sources[0]
    assert len(train[1].bare_text) < len(train[0].bare_text)
    assert {variant for _, variant in pairs(0, max_chars=len(train[1].bare_text))} == {"fixture/train1"}
    with pytest.raises(ConfigError, match="max_chars"):
        pairs(0, max_chars=10)


def test_template_attack_rejects_unknown_options_and_splits(small_sources, tmp_path):
    with pytest.raises(ConfigError, match="unknown options"):
        prepare("template", [PLAIN], cache_dir=tmp_path, options={"splt": "train"})
    with pytest.raises(ConfigError, match="template split"):
        prepare("template", [PLAIN], cache_dir=tmp_path, options={"split": "test"})
    with pytest.raises(ConfigError, match="max_templates"):
        prepare("template", [PLAIN], cache_dir=tmp_path, options={"max_templates": -1})
    with pytest.raises(ConfigError, match="max_chars"):
        prepare("template", [PLAIN], cache_dir=tmp_path, options={"max_chars": -1})


# --- the real split (embeds ~1,300 long templates: minutes on a CPU) ----------------


@pytest.mark.slow
def test_packaged_heldout_templates_are_far_from_every_train_template(tmp_path, monkeypatch):
    vectors: dict[str, torch.Tensor] = {}

    def remembering_embed(texts, **kwargs):
        result = embeddings.embed(texts, **kwargs)
        vectors.update(zip(texts, result))
        return result

    monkeypatch.setattr(templates, "embed", remembering_embed)
    train = template_set("train", tmp_path)
    heldout = template_set("heldout", tmp_path)
    assert train and heldout
    assert not {item.id for item in train} & {item.id for item in heldout}
    train_vectors = torch.stack([vectors[item.bare_text] for item in train])
    heldout_vectors = torch.stack([vectors[item.bare_text] for item in heldout])
    assert (heldout_vectors @ train_vectors.T).max() < 0.95
