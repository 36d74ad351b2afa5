"""Parameters and FLOPs of the downstream models next to the paper's Tables 3 and 4.

    PYTHONPATH=src python benchmarks/downstream_flops.py [--record]

Counted on the meta device (no memory, about a second): (Cascade) Mask R-CNN at 1280x800 the way mmdet's
get_flops.py counted (1000 proposals through each box head, 100 through each mask head), UperNet at 2048x512 through the
decode head (the auxiliary head only trains, but its parameters count). GMACs = "GFLOPs" as the paper uses it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convnext.downstream import downstream_flops

ROWS = ["maskrcnn_convnext_tiny", "maskrcnn_convnext_small", "maskrcnn_convnext_base",
        "cascade_maskrcnn_convnext_tiny", "cascade_maskrcnn_convnext_small", "cascade_maskrcnn_convnext_base",
        "upernet_convnext_tiny", "upernet_convnext_small", "upernet_convnext_base"]


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", action="store_true", help="write benchmarks/downstream_flops.md")
    a = p.parse_args()
    lines = ["| model | input | GMACs | paper | params (M) | paper |", "|---|---|---|---|---|---|"]
    for name in ROWS:
        r = downstream_flops(name)
        size = "2048x512" if name.startswith("upernet") else "1280x800"
        lines.append(f"| {name} | {size} | {r['gmacs']:.1f} | {_fmt(r['paper_gmacs'], 0)} | {r['params']:.1f} | "
                     f"{_fmt(r['paper_params'], 0)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.record:
        Path(__file__).with_suffix(".md").write_text(
            "# Downstream model size vs the paper\n\n`PYTHONPATH=src python benchmarks/downstream_flops.py --record`"
            " (meta device; detectors with mmdet's 81-way COCO head, UperNet with 150 classes; the paper's Cascade "
            "GMACs/params are Table 3's).\n\n" + text)


if __name__ == "__main__":
    main()
