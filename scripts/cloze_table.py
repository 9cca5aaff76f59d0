"""Write the table of results/cloze-base/*.json into docs/evaluation.md (between its cloze-base markers).

python3 scripts/cloze_table.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARD = {"hellaswag": 42.1, "piqa": 68.4, "obqa": 34.6, "winogrande": 51.3}  # SmolLM2-135M model card, lighteval
ORDER = ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa")


def table(folder: Path) -> str:
    rows = ["| set | examples | acc | acc_norm | model card (lighteval) | seconds |", "|---|---|---|---|---|---|"]
    found = {}
    for name in ORDER:
        path = folder / f"{name}.json"
        if not path.is_file():
            rows.append(f"| {name} | not run yet | | | | |")
            continue
        summary = json.loads(path.read_text())["datasets"][name]
        found[name] = summary
        card = CARD.get(name)
        rows.append(
            f"| {summary['display']} | {summary['total']} | {summary['accuracy']:.2f} | {summary['accuracy_norm']:.2f} "
            f"| {'' if card is None else f'{card:.1f}'} | {summary['seconds']:.0f} |"
        )
    if "arc_e" in found and "arc_c" in found:
        acc = (found["arc_e"]["accuracy"] + found["arc_c"]["accuracy"]) / 2
        norm = (found["arc_e"]["accuracy_norm"] + found["arc_c"]["accuracy_norm"]) / 2
        rows.append(f"| ARC (mean of e and c) | | {acc:.2f} | {norm:.2f} | 43.9 | |")
    return "\n".join(rows)


def main() -> None:
    doc = ROOT / "docs" / "evaluation.md"
    text = doc.read_text()
    new = re.sub(
        r"(<!-- cloze-base:begin -->\n).*?(\n<!-- cloze-base:end -->)",
        lambda m: m.group(1) + table(ROOT / "results" / "cloze-base") + m.group(2),
        text,
        flags=re.S,
    )
    doc.write_text(new)
    print(table(ROOT / "results" / "cloze-base"))


if __name__ == "__main__":
    main()
