"""analysis.json, analysis.md and the PNGs (matplotlib, no display), all drawn from the
one numbers dict that analysis.json holds, plus the lines the main job's report embeds."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import write_text
from ..plots import _pyplot

PNGS = {
    "geometry": ("geometry_by_layer.png", "distance, JS divergence, probe accuracy and refusal-token share by layer"),
    "pca": ("pca_by_layer.png", "PCA of last-prompt-token activations, safe vs unsafe"),
    "lens_prompt": ("lens_harmful_prompt.png", "logit lens, harmful prompt and the model's own first tokens"),
    "lens_forced": ("lens_forced_answer.png", "logit lens, teacher-forced harmful answer"),
}
METRICS = (("distance", "centroid distance"), ("relative_distance", "distance / mean norm"),
           ("js", "JS divergence (bits)"), ("probe_accuracy", "held-out probe accuracy"))
PCA_PANELS = 8  # layers shown in the PCA grid, evenly spaced


def show(token: str, width: int = 8) -> str:
    """A token as printable ASCII for plot labels (fonts lack many glyphs; "$" would
    start mathtext)."""
    text = token.replace("\n", "\\n").encode("ascii", "backslashreplace").decode()
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text).replace("$", "\\$")
    return (text if len(text) <= width else text[: width - 1] + "~") or "''"


def _save(figure, png: Path) -> Path:
    figure.savefig(png, dpi=110)
    _pyplot().close(figure)
    return png


def depth_curves(numbers: dict, png: Path) -> Path:
    """One panel per geometry number and one for the refusal-token share, base vs bent."""
    plt = _pyplot()
    layers, states = numbers["layers"], numbers["states"]
    figure, axes = plt.subplots(2, 3, figsize=(12, 6), squeeze=False)
    panels = list(axes.flat)
    for axis, (key, title) in zip(panels, METRICS):
        for state, values in states.items():
            axis.plot(layers, values["geometry"][key], marker=".", label=state)
        axis.set_title(title)
    axis = panels[len(METRICS)]
    for state, values in states.items():
        line, = axis.plot(layers, values["refusal_share"]["unsafe"], marker=".", label=f"{state}, unsafe")
        axis.plot(layers, values["refusal_share"]["safe"], linestyle="--", color=line.get_color(), label=f"{state}, safe")
    axis.set_title("refusal-token share (logit lens)")
    axis.set_ylim(-0.05, 1.05)
    for axis in panels[: len(METRICS) + 1]:
        axis.set_xlabel("layer")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in panels[len(METRICS) + 1:]:
        axis.axis("off")
    figure.tight_layout()
    return _save(figure, png)


def pca_grid(numbers: dict, png: Path) -> Path:
    """Rows: model states; columns: up to PCA_PANELS layers evenly spaced, the last included."""
    plt = _pyplot()
    layers, states = numbers["layers"], numbers["states"]
    n_safe = numbers["settings"]["n_safe"]
    # Layer 0 (embeddings) is one point: the last prompt token is the same template token.
    first = 1 if layers[0] == 0 and len(layers) > 1 else 0
    count = min(PCA_PANELS, len(layers) - first)
    picks = sorted({first + round(i * (len(layers) - 1 - first) / max(1, count - 1)) for i in range(count)})
    figure, axes = plt.subplots(len(states), len(picks), figsize=(2.4 * len(picks), 2.4 * len(states)), squeeze=False)
    for row, (state, values) in zip(axes, states.items()):
        for axis, index in zip(row, picks):
            coords = values["pca"]["coords"][index]
            axis.scatter(*zip(*coords[:n_safe]), s=8, marker="o", label="safe")
            axis.scatter(*zip(*coords[n_safe:]), s=10, marker="x", label="unsafe")
            explained = values["pca"]["explained"][index]
            axis.set_title(f"{state}, layer {layers[index]} ({100 * sum(explained):.0f}% var)", fontsize=8)
            axis.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, png)


def lens_heatmaps(numbers: dict, which: str, png: Path) -> Path:
    """The top token (text) and its probability (colour) per layer and position, base
    and bent side by side; the red line separates prompt from response positions."""
    plt = _pyplot()
    layers, states = numbers["layers"], numbers["states"]
    columns = max(len(values["lens"][which]["tokens"]) for values in states.values())
    figure, axes = plt.subplots(1, len(states), figsize=(len(states) * (1.5 + 0.6 * columns), 1.5 + 0.22 * len(layers)),
                                squeeze=False, constrained_layout=True)
    for axis, (state, values) in zip(axes[0], states.items()):
        grid = values["lens"][which]
        image = axis.imshow(grid["top_probs"], aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
        for row, (tokens, probs) in enumerate(zip(grid["top_tokens"], grid["top_probs"])):
            for column, (token, prob) in enumerate(zip(tokens, probs)):
                axis.text(column, row, show(token), ha="center", va="center", fontsize=5,
                          color="black" if prob > 0.6 else "white")
        axis.set_xticks(range(len(grid["tokens"])), [show(t) for t in grid["tokens"]], rotation=90, fontsize=6)
        axis.set_yticks(range(len(layers)), layers, fontsize=6)
        axis.axvline(grid["prompt_positions"] - 0.5, color="red", linewidth=1)
        axis.set_xlabel("input token (cell: predicted next token)")
        axis.set_ylabel("layer")
        axis.set_title(state)
    figure.colorbar(image, ax=list(axes.flat), shrink=0.8, label="top-token probability")
    return _save(figure, png)


def _cell(values: list, index: int) -> str:
    return f"{values[index]:.3g}"


def markdown(numbers: dict, files: dict) -> str:
    s, layers, states = numbers["settings"], numbers["layers"], numbers["states"]
    late = numbers["late_layers"]
    lines = [
        "## Representation analysis",
        "",
        f"Base `{s['model']}` vs bent (adapter `{s['adapter']}`): {s['n_safe']} safe prompts (`{s['safe_path']}`) "
        f"and {s['n_unsafe']} unsafe prompts (`{s['unsafe_path']}`), activations at the last prompt token. "
        f"JS divergence and probe accuracy use the held-out projection on the safe-to-unsafe centroid direction "
        f"({s['folds']} folds, {s['bins']}-bin histograms; README, \"Analysis\"). The refusal-token share is the share "
        "of prompts whose logit-lens top token at the last prompt position is a refusal token.",
        "",
        *(f"![{caption}]({Path(files[key]).name})\n" for key, (_, caption) in PNGS.items()),
        "| layer | " + " | ".join(f"{title}: base / bent" for _, title in METRICS) + " | refusal share, unsafe: base / bent |",
        "|---|" + "---|" * (len(METRICS) + 1),
    ]
    for i, layer in enumerate(layers):
        cells = [f"{_cell(states['base']['geometry'][key], i)} / {_cell(states['bent']['geometry'][key], i)}"
                 for key, _ in METRICS]
        share = [states[state]["refusal_share"]["unsafe"][i] for state in ("base", "bent")]
        lines.append(f"| {layer} | " + " | ".join(cells) + f" | {share[0]:.2f} / {share[1]:.2f} |")
    late_share = {state: states[state]["late_refusal_share"] for state in states}
    lines += [
        "",
        f"Late layers {late[0]}..{late[-1]}: refusal-token share on unsafe prompts {late_share['base']['unsafe']:.2f} (base) "
        f"-> {late_share['bent']['unsafe']:.2f} (bent); on safe prompts {late_share['base']['safe']:.2f} -> "
        f"{late_share['bent']['safe']:.2f}.",
        "",
        f"Heat maps: unsafe prompt `{s['harmful_prompt_id']}` with each model's own first {s['max_answer_tokens']} "
        f"tokens; teacher-forced answer from {s['forced_answer_source']} (first {s['max_answer_tokens']} tokens).",
        "Refusal vocabulary: " + ", ".join(f"`{show(t, 16)}`" for t in numbers["refusal_vocabulary"]) + ".",
        "",
        f"All numbers and settings: [analysis.json]({Path(files['json']).name}). Took {numbers['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(numbers: dict, out: Path) -> dict:
    """Write every artifact to ``out``; returns name -> path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "analysis.json", "markdown": out / "analysis.md"}
    files.update({key: out / name for key, (name, _) in PNGS.items()})
    numbers["files"] = {key: str(path) for key, path in files.items()}
    write_text(files["json"], json.dumps(numbers, indent=1))
    depth_curves(numbers, files["geometry"])
    pca_grid(numbers, files["pca"])
    lens_heatmaps(numbers, "harmful_prompt", files["lens_prompt"])
    lens_heatmaps(numbers, "forced_answer", files["lens_forced"])
    write_text(files["markdown"], markdown(numbers, files))
    return files


def report_lines(result, relative_to: Path) -> list[str]:
    """Markdown lines for the main job's report: the distance-over-depth plot, the
    late-layer refusal share and links to the analysis."""
    def link(key: str) -> str:
        return os.path.relpath(result.files[key], relative_to)

    states = result.numbers["states"]
    late = result.numbers["late_layers"]
    share = {state: states[state]["late_refusal_share"]["unsafe"] for state in states}
    distance = {state: states[state]["geometry"]["distance"][-1] for state in states}
    return [
        "## Representation analysis",
        "",
        f"Safe vs unsafe held-out prompts at the last prompt token, base vs trained. At layer "
        f"{result.numbers['layers'][-1]} the centroid distance is {distance['base']:.3g} -> {distance['bent']:.3g}; "
        f"in layers {late[0]}..{late[-1]} the logit lens's top token on unsafe prompts is a refusal token for "
        f"{100 * share['base']:.0f}% -> {100 * share['bent']:.0f}% of them.",
        "",
        f"![distance over depth]({link('geometry')})",
        "",
        f"Details (PCA, logit-lens heat maps, every number): [analysis.md]({link('markdown')}), "
        f"[analysis.json]({link('json')}).",
    ]


def summary_lines(result) -> list[str]:
    """The one-screen summary of `repbend analyze`."""
    numbers = result.numbers
    layers, states = numbers["layers"], numbers["states"]
    # At most ~24 rows: every layer of a small model, evenly spaced ones of a deep one.
    step = max(1, -(-len(layers) // 24))
    shown = sorted(set(range(0, len(layers), step)) | {len(layers) - 1})
    lines = [f"{'layer':>5} {'distance base':>14} {'bent':>10} {'JS base':>8} {'bent':>6} {'probe base':>10} "
             f"{'bent':>6} {'refusal base':>12} {'bent':>6}"]
    for i in shown:
        g = {state: states[state]["geometry"] for state in states}
        r = {state: states[state]["refusal_share"]["unsafe"][i] for state in states}
        lines.append(f"{layers[i]:>5} {g['base']['distance'][i]:>14.3g} {g['bent']['distance'][i]:>10.3g} "
                     f"{g['base']['js'][i]:>8.2f} {g['bent']['js'][i]:>6.2f} {g['base']['probe_accuracy'][i]:>10.2f} "
                     f"{g['bent']['probe_accuracy'][i]:>6.2f} {r['base']:>12.2f} {r['bent']:>6.2f}")
    late = numbers["late_layers"]
    share = {state: states[state]["late_refusal_share"] for state in states}
    lines += [
        "",
        f"refusal-token share, layers {late[0]}..{late[-1]} (last prompt position): unsafe prompts "
        f"{share['base']['unsafe']:.2f} -> {share['bent']['unsafe']:.2f}, safe prompts "
        f"{share['base']['safe']:.2f} -> {share['bent']['safe']:.2f} (base -> bent)",
        f"took {numbers['seconds']:.0f} s",
        "",
        *(f"{key + ':':<13}{path}" for key, path in result.files.items()),
    ]
    return lines
