"""The security report: one Markdown section and one plot per attack, and a verdict line per claim.

A *verdict* compares an attack's accuracy with the model's accuracy under its key and with
chance: an attacker's model is **usable** when it keeps at least half of what the key gives above
chance, ``accuracy >= chance + USABLE * (correct - chance)``. Each line names the numbers it
judges, so a reader can apply another rule.

Plots need matplotlib (``kpfast[experiments]``); it is imported only when a plot is drawn.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...report.tables import markdown_table, percent, plural
from .keyspace import chain_label

USABLE = 0.5  # share of the key's accuracy gain over chance that makes an attacker's model usable
TITLES = {"protection": "Correct key, wrong keys, plain images", "key-space": "Key space",
          "key-search": "Random key search", "key-estimate": "Heuristic key estimation",
          "finetune": "Fine-tuning the stolen model", "known-plaintext": "Known-plaintext key recovery"}

# What the attacker holds in each stage (the module docstrings say the same at length).
THREAT_MODELS = {
    "protection": "no attack: the key holder's accuracy, beside what someone without the key gets from random "
                  "wrong keys and from plain images.",
    "key-space": "none needed; this is counting the key sets an exhaustive search would have to try.",
    "key-search": "the attacker holds the model file (weights, architecture, public chain config; never the key) "
                  "and one small labelled batch; they score random keys on it and keep the best.",
    "key-estimate": "the attacker holds the model file (never the key) and one small labelled batch; from a random "
                    "key they keep every swap and bit flip that does not lower the batch score.",
    "finetune": "the attacker holds the model file (never the key) and n plain labelled images; they fine-tune "
                "the stolen weights on plain images, which is worth stealing only if it beats training from scratch.",
    "known-plaintext": "the attacker holds the model file (never the key) and P (plain, protected) image pairs; "
                       "they solve for what the pairs determine of the key and fill the rest at random.",
}

Record = Mapping[str, Any]


def usable(accuracy: float, correct: float, chance: float) -> bool:
    return accuracy >= chance + USABLE * (correct - chance)


def _pt(x: float) -> str:
    return f"{100 * x:+.1f} pt"


def yes_no(x: bool) -> str:
    return "yes" if x else "no"


# --- verdicts -----------------------------------------------------------------------------------


def verdicts(records: Mapping[str, Record]) -> list[str]:
    """One line per claim the records can judge (``records``: stage name -> its result)."""
    protection = records.get("protection")
    if protection is None:
        return []
    correct, chance = protection["correct_key"]["accuracy"], protection["chance"]
    ref = f"vs {percent(correct)} with the key, chance {percent(chance)}"
    wrong = protection["wrong_keys"]
    plain = protection["plain_images"]["accuracy"]
    lines = [(f"wrong key collapses: {yes_no(not usable(wrong['max'], correct, chance))}, "
              f"{percent(wrong['mean'])} (max {percent(wrong['max'])} of {wrong['count']} keys) {ref}"),
             f"plain images collapse: {yes_no(not usable(plain, correct, chance))}, {percent(plain)} {ref}"]
    space = records.get("key-space")
    if space is not None:
        lines.append(f"key space out of brute-force reach: {yes_no(space['total_bits'] >= 128)}, 2^{space['total_bits']:.1f} "
                     f"key sets (the reference's seeds: 2^{space['reference_bits']:.1f})")
    for search in _as_list(records.get("key-search")):
        best = search["best_test_accuracy"]
        lines.append(f"random key search finds no usable key ({search['keys_tried']:,} keys, {search['strategy']}): "
                     f"{yes_no(not usable(best, correct, chance))}, best {percent(best)} on the test set {ref}")
    estimate = records.get("key-estimate")
    if estimate is not None:
        final = estimate["final_test_accuracy"]
        line = (f"heuristic key estimation fails ({_passes(len(estimate['passes']))}): "
                f"{yes_no(not usable(final, correct, chance))}, {percent(final)} after the last pass {ref}")
        agreement = estimate["passes"][-1].get("agreement") if estimate["passes"] else None
        if agreement:
            line += f"; recovered {_agreement(agreement)}"
        lines.append(line)
    finetune = records.get("finetune")
    if finetune is not None:
        for n, fraction in zip(finetune["sizes"], finetune["fractions"]):
            stolen, scratch = _run(finetune, "stolen", n), _run(finetune, "scratch", n)
            own = _run(finetune, "own-key", n)
            line = (f"fine-tuning advantage with {_fraction(fraction)} data ({n:,} images): "
                    f"{_pt(stolen - scratch)} over scratch ({percent(stolen)} vs {percent(scratch)})")
            if own is not None:
                line += f"; behind an own key {percent(own)}"
            lines.append(line)
    pairs = records.get("known-plaintext")
    if pairs:
        one = next((r for r in pairs["results"] if r["pairs"] == 1), pairs["results"][0])
        falls = usable(one["test_accuracy"], correct, chance)
        lines.append(f"falls to {plural(one['pairs'], 'known pair')}: {yes_no(falls)}, {percent(one['test_accuracy'])} with "
                     f"the recovered key ({percent(one['key_determined'])} of the key determined) {ref}")
    return lines


def _as_list(record: Any) -> list[Record]:
    if record is None:
        return []
    return list(record["searches"]) if "searches" in record else [record]


def _run(finetune: Record, variant: str, n: int) -> float | None:
    return next((r["test_accuracy"] for r in finetune["runs"] if r["variant"] == variant and r["images"] == n), None)


def _passes(n: int) -> str:
    return f"{n} pass{'' if n == 1 else 'es'}"


def _fraction(f: float) -> str:
    return f"{100 * f:.3g} %"


def _agreement(agreement: Mapping[str, float]) -> str:
    names = {"perm": "permutation positions", "np_mask": "NP mask bits", "ffx_mask": "FFX mask bits",
             "ffx_lut": "FFX table entries"}
    return ", ".join(f"{percent(v)} of {names.get(k, k)}" for k, v in agreement.items())


# --- one section per stage ----------------------------------------------------------------------


def section(name: str, record: Record, protection: Record | None = None) -> list[str]:
    """The Markdown lines of one stage's result."""
    lines = [f"## {TITLES.get(name, name)}", "", f"Threat model: {THREAT_MODELS[name]}", ""] if name in THREAT_MODELS \
        else [f"## {TITLES.get(name, name)}", ""]
    if name == "protection":
        w = record["wrong_keys"]
        lines += markdown_table(["input", "accuracy"], [
            ["correct key", percent(record["correct_key"]["accuracy"])],
            [f"wrong keys ({w['count']}): mean [min, max]", f"{percent(w['mean'])} [{percent(w['min'])}, {percent(w['max'])}]"],
            ["plain images (no key)", percent(record["plain_images"]["accuracy"])],
            ["chance", percent(record["chance"])]])
    elif name == "key-space":
        lines += markdown_table(["part", "log2 choices"], [[k, f"{v:.1f}"] for k, v in record["bits"].items()])
        lines += ["", (f"In all 2^{record['total_bits']:.1f} key sets of `KeySet.generate` for "
                       f"{chain_label(record['ops'])} at M = {record['block_size']} (L = {record['positions']}); "
                       f"the reference's seed-derived keys: 2^{record['reference_bits']:.1f}.")]
    elif name == "key-search":
        rows = []
        for s in _as_list(record):
            rows.append([s["strategy"], s["space"], f"{s['keys_tried']:,}", s["batch_images"],
                         " -> ".join(f"{r['keys']}x{r['images']}" for r in s["rounds"]), f"{s['model_evaluations']:,}",
                         f"{s['seconds']:.1f}", f"{s['keys_per_second']:,.0f}", percent(s["best_batch_accuracy"]),
                         percent(s["best_test_accuracy"])])
        lines += markdown_table(["strategy", "candidates", "keys", "batch", "rounds (keys x images)",
                                 "images scored", "s", "keys/s", "best, batch", "best, test set"], rows)
        for s in _as_list(record):
            if s.get("agreement"):
                lines += ["", f"Best key of the {s['strategy']} search against the true key: {_agreement(s['agreement'])}."]
    elif name == "key-estimate":
        rows = [[0, "–", percent(record["start_batch_accuracy"]), percent(record["start_test_accuracy"]), "–",
                 _agreement(record["start_agreement"]) if record.get("start_agreement") else "–"]]
        rows += [[p["pass"], p["edits_kept"], percent(p["batch_accuracy"]), percent(p["test_accuracy"]),
                  f"{p['seconds']:.1f}", _agreement(p["agreement"]) if p.get("agreement") else "–"]
                 for p in record["passes"]]
        screen = record.get("screen_images", 0)
        lines += [(f"Criterion {record['criterion']}, batch of {record['batch_images']} images"
                   f"{f' (each launch of edits screened on {screen} first)' if screen else ''}, "
                   f"{record['model_evaluations']:,} images scored in {record['seconds']:.0f} s."), ""]
        lines += markdown_table(["pass", "edits kept", "batch accuracy", "test accuracy", "s",
                                 "recovered (evaluation mode)"], rows)
    elif name == "finetune":
        rows = []
        for n, f in zip(record["sizes"], record["fractions"]):
            runs = {r["variant"]: r for r in record["runs"] if r["images"] == n}
            rows.append([f"{n:,} ({_fraction(f)})", next(iter(runs.values()))["epochs"],
                         *(percent(runs[v]["test_accuracy"]) if v in runs else "–" for v in ("stolen", "scratch", "own-key")),
                         _pt(runs["stolen"]["test_accuracy"] - runs["scratch"]["test_accuracy"])
                         if "stolen" in runs and "scratch" in runs else "–"])
        lines += [(f"Budget: {record['steps']} steps of {record['batch_size']} images per run (peak LR "
                   f"{record['lr']}), seed {record['seed']}. Before fine-tuning the stolen model scores "
                   f"{percent(record['stolen_plain_accuracy'])} on plain images."), ""]
        lines += markdown_table(["n (of the training set)", "epochs", "stolen, fine-tuned (plain)", "from scratch (plain)",
                                 "stolen, own key", "advantage"], rows)
    elif name == "known-plaintext":
        rows = []
        for r in record["results"]:
            det = r["determined"]
            rows.append([r["pairs"], r["blocks"], *(percent(det[p]) if p in det else "–"
                                                    for p in ("perm", "np_mask", "ffx_mask", "ffx_lut")),
                         percent(r["reproduces_pairs"]), percent(r["test_accuracy"]),
                         _agreement(r["agreement"]) if r.get("agreement") else "–"])
        lines += markdown_table(["pairs P", "equations per position", "perm determined", "NP bits", "FFX bits",
                                 "FFX table entries", "pairs reproduced", "test accuracy, recovered key",
                                 "agreement with the true key"], rows)
    else:
        lines.append(f"```\n{record}\n```")
    return lines + [""]


def audit_markdown(meta: Record, records: Mapping[str, Record]) -> str:
    """report.md: what was attacked, the verdicts, then one section per stage."""
    lines = ["# Security audit of a key-protected model", "",
             (f"- Model: `{meta['model']}` ({meta['arch']}, {chain_label(meta['ops'])} at M = {meta['block_size']}, "
              f"key fingerprint `{meta['key_fingerprint']}`)"),
             (f"- Data: {meta['data']} ({meta['train_images']:,} training / {meta['test_images']:,} test images); "
              f"device: {meta['device']}; budget `{meta['budget']}`, seed {meta['seed']}"),
             ("- Threat model: the attacker holds the protected model file (weights, architecture and the public "
              "transform config), never the key; what else each attack holds is stated in its section."),
             (f"- Rule: an attack's model is *usable* when it keeps at least {USABLE:.0%} of the key's accuracy "
              "gain over chance."), "", "## Verdicts", ""]
    lines += [f"- {v}" for v in verdicts(records)] + [""]
    for name in TITLES:
        if name in records:
            lines += section(name, records[name])
    plots = meta.get("plots", [])
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(lines)


# --- plots ---------------------------------------------------------------------------------------


def plot(name: str, record: Record, path: str | Path, protection: Record | None = None) -> Path | None:
    """The stage's plot as a PNG (None for stages without one)."""
    if name not in ("key-search", "key-estimate", "finetune", "known-plaintext"):
        return None
    from matplotlib.figure import Figure

    from ...report.plots import save_png

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = figure.subplots()
    if name == "key-search":
        for s in _as_list(record):
            xs, ys = zip(*s["curve"])
            line, = ax.plot(xs, [100 * v for v in ys], drawstyle="steps-post",
                            label=f"{s['strategy']}: best of the first k keys, search batch")
            ax.axhline(100 * s["best_test_accuracy"], linestyle=":", color=line.get_color(),
                       label=f"{s['strategy']}: its best key, test set")
        ax.set_xscale("log")
        ax.set_xlabel("keys tried")
    elif name == "key-estimate":
        passes = [0] + [p["pass"] for p in record["passes"]]
        ax.plot(passes, [100 * record["start_test_accuracy"]] + [100 * p["test_accuracy"] for p in record["passes"]],
                "o-", label="estimated key, test set")
        ax.plot(passes, [100 * record["start_batch_accuracy"]] + [100 * p["batch_accuracy"] for p in record["passes"]],
                "s--", label="estimated key, search batch")
        ax.set_xlabel("estimation pass")
    elif name == "finetune":
        for variant, style in (("stolen", "o-"), ("scratch", "s--"), ("own-key", "^-.")):
            points = [(r["images"], r["test_accuracy"]) for r in record["runs"] if r["variant"] == variant]
            if points:
                ax.plot([n for n, _ in points], [100 * a for _, a in points], style, label=variant)
        ax.axhline(100 * record["stolen_plain_accuracy"], color="grey", linestyle=":",
                   label="stolen, plain images, no training")
        ax.set_xscale("log")
        ax.set_xticks(record["sizes"], [f"{n:,}" for n in record["sizes"]])
        ax.minorticks_off()
        ax.set_xlabel("attacker's labelled images n")
    else:
        results = record["results"]
        ps = [r["pairs"] for r in results]
        ax.plot(ps, [100 * r["key_determined"] for r in results], "o-", label="key determined (mean over parts)")
        ax.plot(ps, [100 * r["test_accuracy"] for r in results], "s--", label="test accuracy, recovered key")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ps, [str(p) for p in ps])
        ax.set_xlabel("known (plain, protected) pairs P")
    if protection is not None:
        ax.axhline(100 * protection["correct_key"]["accuracy"], color="black", linewidth=0.8, label="correct key")
        ax.axhline(100 * protection["chance"], color="black", linestyle="--", linewidth=0.8, label="chance")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(TITLES[name])
    return save_png(figure, path)


def summary_table(folders: Sequence[str | Path]) -> str:
    """The summary table of several audit folders (their report.json), one row each, named by folder:
    ``python -c "import sys; from kpfast.protection.attacks.report import summary_table;
    print(summary_table(sys.argv[1:]))" out/*``."""
    audits = []
    for folder in folders:
        saved = json.loads((Path(folder) / "report.json").read_text())
        audits.append((Path(folder).name, saved["meta"], saved["results"]))
    return "\n".join(grid_markdown(audits)) + "\n"


def grid_markdown(audits: Sequence[tuple[str, Record, Mapping[str, Record]]]) -> list[str]:
    """One summary table over several audits (name, meta, records): the headline number of each attack."""
    rows = []
    for label, meta, records in audits:
        p = records.get("protection")
        if p is None:
            continue
        correct = p["correct_key"]["accuracy"]
        search = _as_list(records.get("key-search"))
        estimate = records.get("key-estimate")
        finetune = records.get("finetune")
        pairs = records.get("known-plaintext")
        one = next((r for r in pairs["results"] if r["pairs"] == 1), None) if pairs else None
        adv = [f"{_pt(_run(finetune, 'stolen', n) - _run(finetune, 'scratch', n))}" for n in finetune["sizes"]] \
            if finetune else []
        rows.append([label, f"{meta['block_size']}", percent(correct, ""),
                     f"{percent(p['wrong_keys']['mean'], '')} / {percent(p['wrong_keys']['max'], '')}",
                     percent(p["plain_images"]["accuracy"], ""),
                     percent(max(s["best_test_accuracy"] for s in search), "") if search else "–",
                     percent(estimate["final_test_accuracy"], "") if estimate else "–",
                     " / ".join(adv) or "–", percent(one["test_accuracy"], "") if one else "–",
                     percent(one["key_determined"], "") if one else "–"])
    return markdown_table(["model", "M", "correct key", "wrong keys mean / max", "plain images", "key search best",
                           "key estimation", "fine-tune advantage (per n)", "1 known pair: accuracy",
                           "1 pair: key determined"], rows)
