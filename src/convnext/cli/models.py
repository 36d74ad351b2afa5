"""`convnext models`: every model with our parameter and GMAC counts beside the paper's figures."""

from __future__ import annotations

import argparse

from ..flops import model_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'convnext_iso*'")


def main(args: argparse.Namespace) -> int:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    def paper(v):  # as the source prints it: "89", "15.4", "4.47"
        return "-" if v is None else format(v, "g")

    header = f"{'model':<20}{'params M':>10}{'paper':>8}{'GMACs 224':>11}{'paper':>8}{'GMACs 384':>11}" \
             f"{'paper':>8}{'top-1':>7}"
    print(header)
    print("-" * len(header))
    for r in model_table(args.pattern):
        print(f"{r['model']:<20}{r['params_m']:>10.2f}{paper(r['paper_params_m']):>8}"
              f"{r['gmacs_224']:>11.2f}{paper(r['paper_gmacs_224']):>8}{r['gmacs_384']:>11.2f}"
              f"{paper(r['paper_gmacs_384']):>8}{fmt(r['paper_top1'], '.1f'):>7}")
    print("GMACs = FLOPs/2 counted by torch.utils.flop_counter (convolutions and linear layers); for convnextv2_* "
          "also 5 per element of each block LayerNorm, as fvcore counts the official V2 code. Paper figures as "
          "printed in Table 9 and the official READMEs (top-1: ImageNet-1K at 224; XL: 22K->1K; V2: FCMAE->1K).")
    return 0
