"""Draw docs/decision.png: how localize_node decides (sequence evidence, confidence, threshold).

Replays the node's decision (:mod:`qaa_vpr_ros.decision`, default parameters) for the winter
drive of held-out Nordland places 1920-2399 against a summer map (bundled ``models/nordland_tiny``,
keyframes 10 m apart, odometry = the drive). Left: for one query, the single-frame similarity to
every map keyframe and the sequence score of the hypotheses; the confidence is the margin between
the best one and the best one elsewhere. Right: every query's confidence, right or wrong, with
``min_confidence``.

    .venv/bin/python -m scripts.plot_decision [--data DIR] [--out docs/decision.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIRST, PLACES, SPACING_M = 1920, 480, 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "nordland_heldout")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "nordland_tiny")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "decision.png")
    parser.add_argument("--query", type=int, default=300, help="query (route index) shown on the left")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qaa_vpr_ros.atomic import save_figure
    from qaa_vpr_ros.decision import LocalizeConfig, Localizer, Query
    from qaa_vpr_ros.decision.sequence import score_sequence
    from qaa_vpr_ros.extractor import DescriptorExtractor
    from qaa_vpr_ros.maps import Keyframe, PlaceMap
    from qaa_vpr_ros.model import load_model

    extractor = DescriptorExtractor(load_model(args.model), device="cpu", batch_size=64)
    desc = {}
    for season in ("summer", "winter"):
        paths = [args.data / season / f"images-{(p + 1) * 10:05d}.png" for p in range(FIRST, FIRST + PLACES)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise SystemExit(f"plot_decision: {missing[0]} is missing (give --data)")
        desc[season] = extractor.extract([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths], "rgb")
    reference = PlaceMap.create(extractor.dim, extractor.fingerprint, index_type="flat", map_frame="map")
    reference.add(desc["summer"], [Keyframe(id=i, stamp_sec=i, stamp_nanosec=0, camera="cam", frame_id="cam",
                                            position=(SPACING_M * i, 0.0, 0.0)) for i in range(PLACES)])
    cfg = LocalizeConfig(online_loop_closure=False)
    loc = Localizer(cfg, extractor.dim, extractor.fingerprint, prior_map=reference)
    confidence, correct, shown = [], [], None
    for i in range(PLACES):
        query = Query("cam", 1000 + i, 0, "cam", pose=((SPACING_M * i, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
        (result,) = loc.process([query], desc["winter"][i:i + 1])
        top = result.map.candidates[0]
        confidence.append(top.confidence if top.reason in ("", "confidence") else np.nan)
        correct.append(abs(top.keyframe.id - i) <= 2)
        if i == args.query:
            track = loc.map_matcher._tracks["cam"]
            every = score_sequence(loc.map_matcher.table, np.arange(PLACES),
                                   track.sequence(cfg.sequence_length_m, cfg.sequence_keyframes), cfg.sequence_radius_m)
            shown = (desc["winter"][i] @ desc["summer"].T, every.score, top)
    confidence, correct = np.asarray(confidence), np.asarray(correct)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    frame, sequence, top = shown
    x = np.arange(PLACES)
    left.plot(x, frame, color="0.65", lw=0.8, label="single frame: similarity to each map keyframe")
    left.plot(x, sequence, color="tab:blue", lw=1.4,
              label=f"sequence score ({cfg.sequence_length_m:g} m aligned by odometry)")
    best = int(np.nanargmax(sequence))
    far = np.abs(x - best) * SPACING_M > cfg.confidence_radius_m
    elsewhere = int(np.flatnonzero(far)[np.nanargmax(sequence[far])])
    left.axvline(args.query, color="tab:green", ls=":", lw=1, label="true place")
    left.annotate("", xy=(best, sequence[best]), xytext=(best, sequence[elsewhere]),
                  arrowprops={"arrowstyle": "<->", "color": "tab:red"})
    left.axhline(sequence[elsewhere], color="tab:red", lw=0.8, ls="--",
                 label=f"best elsewhere (> {cfg.confidence_radius_m:g} m away)")
    left.text(best + 5, (sequence[best] + sequence[elsewhere]) / 2,
              f"confidence {sequence[best] - sequence[elsewhere]:.3f}", color="tab:red", fontsize=9)
    left.set_xlabel("map keyframe (summer, 10 m apart)")
    left.set_ylabel("similarity")
    left.set_title(f"winter query {args.query}: one frame is ambiguous, the sequence is not")
    left.legend(fontsize=7, loc="lower left")

    idx = np.arange(PLACES)
    ok = np.isfinite(confidence)
    right.scatter(idx[ok & correct], confidence[ok & correct], s=6, color="tab:green",
                  label="best hypothesis right (+-2 frames)")
    right.scatter(idx[ok & ~correct], confidence[ok & ~correct], s=8, color="tab:red", label="best hypothesis wrong")
    right.axhline(cfg.min_confidence, color="k", lw=1, ls="--",
                  label=f"min_confidence {cfg.min_confidence:g} (accept above)")
    accepted = ok & (confidence >= cfg.min_confidence)
    precision = correct[accepted].mean() if accepted.any() else float("nan")
    right.set_title(f"every winter query: precision {precision:.3f}, recall {(accepted & correct).mean():.3f} "
                    f"at the default")
    right.set_xlabel("winter query (route index)")
    right.set_ylabel("confidence = best - best elsewhere")
    right.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_figure(fig, args.out)
    plt.close(fig)
    print(f"wrote {args.out}: precision {precision:.3f}, recall {(accepted & correct).mean():.3f} on places "
          f"{FIRST}-{FIRST + PLACES - 1}")
    print(f"confidence of the best hypothesis (right panel): wrong ones at most "
          f"{np.max(confidence[ok & ~correct]):.3f}, right ones up to {np.max(confidence[ok & correct]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
