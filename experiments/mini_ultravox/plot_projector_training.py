"""Loss curves of one or more train_projector.py runs in one figure (plotly HTML), e.g. a run and its rerun.

Each run's log.jsonl gives the training loss, its cross-entropy, KL and CTC parts (a moving average over
--smooth steps; phase-1 steps carry the CTC term only) and the validation WER of the periodic evaluations,
the student's "repeat" generation and, where logged, the CTC head's greedy reading (right axis).
Prints, for runs after the first, the largest absolute difference of their per-step losses from the first
run's over the steps they share: 0.0 means the rerun retraced the first run exactly.

A run continued from another's export (train_projector.py --init) is named after it with "+":
runs/a+runs/b draws b's steps after a's last one.

Usage: python -m experiments.mini_ultravox.plot_projector_training runs/projector runs/projector-rerun \
           --out experiments/mini_ultravox/history/loss_curve.html
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def read_log(work: Path) -> list[dict]:
    path = work / "log.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} is missing: not a train_projector.py work folder")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_chain(name: str) -> list[dict]:
    """Logs of "a+b+...": each run's steps numbered on from the last step of the runs before it."""
    out: list[dict] = []
    for part in name.split("+"):
        offset = max((e["step"] for e in out), default=0)
        out += [{**e, "step": e["step"] + offset} for e in read_log(Path(part))]
    return out


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[:window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def figure(runs: dict[str, list[dict]], smooth: int) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name, log in runs.items():
        for key, dash in (("loss", "solid"), ("ce", "dot"), ("kl", "dash"), ("ctc", "dashdot")):
            points = [e for e in log if key in e and "val_wer" not in e]
            if not points:
                continue
            values = np.array([e[key] for e in points])
            fig.add_trace(go.Scatter(x=[e["step"] for e in points], y=moving_average(values, smooth), mode="lines",
                                     line={"dash": dash}, name=f"{name}: {key} (mean of {smooth})"),
                          secondary_y=False)
        for key, label in (("val_wer", "validation WER"), ("val_ctc_wer", "validation WER, CTC reading")):
            evals = [e for e in log if key in e]
            if evals:
                fig.add_trace(go.Scatter(x=[e["step"] for e in evals], y=[e[key] for e in evals],
                                         mode="markers+lines", name=f"{name}: {label}"), secondary_y=True)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss (nats per token)", secondary_y=False)
    fig.update_yaxes(title_text="WER", secondary_y=True, rangemode="tozero")
    fig.update_layout(title="mini-ultravox projector training", template="plotly_white")
    return fig


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("works", nargs="+", help="train_projector.py work folders (a+b: b continued from a)")
    parser.add_argument("--out", type=Path, required=True, help="HTML file (plotly.js from its CDN)")
    parser.add_argument("--smooth", type=int, default=25, help="moving-average window in steps")
    args = parser.parse_args(argv)
    runs = {work: read_chain(work) for work in args.works}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure(runs, args.smooth).write_html(args.out, include_plotlyjs="cdn")
    first = {e["step"]: e["loss"] for e in next(iter(runs.values())) if "loss" in e}
    differences = {}
    for name, log in list(runs.items())[1:]:
        shared = [(first[e["step"]], e["loss"]) for e in log if "loss" in e and e["step"] in first]
        differences[name] = max((abs(a - b) for a, b in shared), default=float("nan"))
        print(f"{name}: {len(shared)} steps shared with {args.works[0]}, max |loss difference| "
              f"{differences[name]:.3g}")
    print(f"wrote {args.out}")
    return differences


if __name__ == "__main__":
    main(sys.argv[1:])
