"""How vague SynthPedes' captions are, and how vague its knobs can make them (issue 25's
ambiguity measure, docs/results.md "What a caption's σ could know").

For each generator setting (``omit_rate`` × ``brief_rate`` × family size) it draws the
data set exactly as ``tbps synth`` does (``draw_records``: the same records, nothing
written) and prints JSON, over the test captions: how many identities of the split each fits (median, 90th
percentile, maximum, share that fit one) and what the stated-attributes predictor reaches
(the reference ``tbps uncertainty`` prints beside a model's caption σ): Spearman's ρ with
log(identities fitted), and the partial ρ with the caption's token count held fixed (a
tokenizer trained on the training captions, as a from-scratch run trains its own).

    python -m tbps.analysis.vagueness --omit 0.12 0.5 0.7 --families 2-4 4-12
    python -m tbps.analysis.vagueness --brief 0 0.3 0.5
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from ..data.synthpedes.generate import (FAMILY_SIZE, SynthConfig, check_synth_config,
                                        draw_records)
from ..data.tokenizer import CaptionTokenizer
from .uncertainty import partial_spearman, text_only_prediction


def captions(records: list[dict], split: str) -> list[tuple[dict, int, int]]:
    """(attributes stated, identities fitted, words) of every caption of ``split``, as
    ``tbps uncertainty`` reads them from the annotation."""
    return [row for r in records if r["split"] == split
            for row in zip(r["attribute_mentions"], r["identities_fitted"],
                           map(len, r["processed_tokens"]))]


def vagueness(cfg: SynthConfig, family_size: tuple[int, int] = FAMILY_SIZE, workers: int = 1
              ) -> dict:
    """The figures of one generator setting (the module docstring)."""
    records = [rec for rec, _ in draw_records(check_synth_config(cfg), workers, family_size)]
    train, test = captions(records, "train"), captions(records, "test")
    # the partial holds the token count fixed, as `tbps uncertainty` holds the model's
    text = {s: [c for r in records if r["split"] == s for c in r["captions"]]
            for s in ("train", "test")}
    tok = CaptionTokenizer.train(text["train"], 1024, 64)
    length = (tok.encode(text["test"]) != tok.pad_id).sum(1).float()
    fitted = torch.tensor([n for _, n, _ in test], dtype=torch.float32)
    predicted = text_only_prediction(train, test)
    return {"omit_rate": cfg.omit_rate, "brief_rate": cfg.brief_rate,
            "family_size": list(family_size),
            "test_captions": len(test),
            "attributes_stated_mean": round(sum(len(s) for s, _, _ in test) / len(test), 2),
            "identities_fitted": {"median": float(fitted.median()),
                                  "p90": float(fitted.quantile(0.9)),
                                  "max": int(fitted.max()),
                                  "share_fitting_one": round(float((fitted == 1).float().mean()), 3)},
            "stated_attributes_predictor": partial_spearman(predicted, fitted.log(), length)}


def _family(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tbps.analysis.vagueness",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--omit", type=float, nargs="+", default=[SynthConfig.omit_rate],
                    help="omit_rate values (the default data set: 0.12)")
    ap.add_argument("--brief", type=float, nargs="+", default=[SynthConfig.brief_rate],
                    help="brief_rate values: the share of brief captions (the default: 0)")
    ap.add_argument("--families", type=_family, nargs="+", default=[FAMILY_SIZE],
                    help="family sizes as LOW-HIGH (the default data set: 2-4)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    for size in args.families:
        for omit in args.omit:
            for brief in args.brief:
                cfg = replace(SynthConfig(), omit_rate=omit, brief_rate=brief)
                print(json.dumps(vagueness(cfg, size, args.workers)), flush=True)


if __name__ == "__main__":
    main()
