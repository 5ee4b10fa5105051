"""merge_maps: combine the shards of one build, and maps of different sessions, into one map.

Shards (``build_map --shard i/N``) of the same build are put back in keyframe order, giving the
map an unsharded build would have produced (same ids, descriptors and records). Maps of different
sessions (multi-session mapping) are concatenated and their keyframes renumbered; they must share
the model and the map frame (or ``--map-frame`` asserts they are aligned) and the UTM zone.

The merged map's ``map_id`` (the session loop-closure records name): ``--map-id`` when given; else
a merge of one build's shards keeps the build's id (the shards must agree on it), and a merge of
several sessions gets its own, "merged-" + 8 hex digits of the sha256 of the inputs' ids in order
(the same inputs give the same id). ``info.merged_from`` keeps each input's id.

Local features and camera intrinsics are carried with their keyframes; a camera topic with
different intrinsics in two inputs is an error (one map holds one calibration per camera).

Example::

    merge_maps run1_map run2_map -o campus_map
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qaa_vpr_ros.map_tools.build import add_index_arguments, index_params_from_args
from qaa_vpr_ros.maps import MapError, PlaceMap, check_map_id, map_session, new_map_id
from qaa_vpr_ros.paths import path_argument

__all__ = ["main", "merge_maps"]


def _shard_info(place_map: PlaceMap) -> tuple[str | None, int, int]:
    build = place_map.info.get("build", {})
    shard = build.get("shard", {})
    return build.get("build_id"), int(shard.get("index", 0)), int(shard.get("count", 1))


def merge_maps(
    maps: Sequence[PlaceMap],
    names: Sequence[str] | None = None,
    *,
    index_type: str | None = None,
    index_params: dict[str, Any] | None = None,
    map_frame: str | None = None,
    map_id: str | None = None,
) -> PlaceMap:
    """One map from ``maps`` (``names`` label them in errors, and stand for the ids of format-1
    inputs). See the module docstring for the rules, ``map_id`` included."""
    if not maps:
        raise MapError("no maps to merge")
    names = list(names) if names is not None else [f"map #{i}" for i in range(len(maps))]
    first = maps[0]
    for name, m in zip(names, maps, strict=True):
        if m.model_fingerprint != first.model_fingerprint:
            raise MapError(
                f"{name} was built with model fingerprint {m.model_fingerprint}, {names[0]} with "
                f"{first.model_fingerprint}; maps of different models cannot be merged"
            )
        if m.dim != first.dim:
            raise MapError(f"{name} has descriptor dim {m.dim}, {names[0]} has {first.dim}")
        if map_frame is None and m.map_frame != first.map_frame:
            raise MapError(
                f"{name} is in frame {m.map_frame!r}, {names[0]} in {first.map_frame!r}; align them and "
                "pass --map-frame to merge anyway"
            )
    cameras: dict[str, tuple[str, Any]] = {}  # topic -> (the first map naming it, its intrinsics)
    for name, m in zip(names, maps, strict=True):
        for topic, intrinsics in m.cameras.items():
            known = cameras.setdefault(topic, (name, intrinsics))
            if known[1] != intrinsics:
                raise MapError(f"camera {topic} has intrinsics {known[1].as_list()} in {known[0]} but "
                               f"{intrinsics.as_list()} in {name}; a map holds one calibration per camera: "
                               "rename the topic in one of them or rebuild it with the same calibration")
    with_features = [(name, m) for name, m in zip(names, maps, strict=True) if m.has_local_features]
    for name, m in with_features:
        if m.feature_config.get("detector") != with_features[0][1].feature_config.get("detector"):
            raise MapError(f"{name} has {m.feature_config.get('detector')} local features, {with_features[0][0]} "
                           f"{with_features[0][1].feature_config.get('detector')}; they cannot be matched")
    zones = {kf.utm_zone for m in maps for kf in m.keyframes if kf.utm_zone}
    if len(zones) > 1:
        raise MapError(f"the maps span UTM zones {sorted(zones)}; positions in different zones are not comparable")

    # Group the inputs: shards of one build form a group, every other map is its own group.
    groups: list[list[int]] = []
    group_of_build: dict[str, int] = {}
    for i, m in enumerate(maps):
        build_id, _, count = _shard_info(m)
        if build_id is not None and count > 1:
            if build_id not in group_of_build:
                group_of_build[build_id] = len(groups)
                groups.append([])
            groups[group_of_build[build_id]].append(i)
        else:
            groups.append([i])
    for members in groups:
        _, _, count = _shard_info(maps[members[0]])
        if count > 1:
            have = sorted(_shard_info(maps[i])[1] for i in members)
            if have != list(range(count)):
                missing = sorted(set(range(count)) - set(have))
                repeated = sorted({s for s in have if have.count(s) > 1})
                raise MapError(
                    f"shards of build {_shard_info(maps[members[0]])[0][:12]} are incomplete: "
                    f"missing {[f'{s}/{count}' for s in missing]}, repeated {[f'{s}/{count}' for s in repeated]}"
                )

    keep_ids = len(groups) == 1
    sessions = [map_session(m.map_id, name) for name, m in zip(names, maps, strict=True)]
    if map_id is not None:
        merged_id: str | None = check_map_id(map_id, "merged map_id")
    elif keep_ids:  # one build (all its shards, or one map alone): it stays that build
        ids = {m.map_id for m in maps}
        if len(ids) > 1:
            raise MapError(f"the shards of one build carry different map_ids {sorted(map(str, ids))}; "
                           "pass --map-id to choose the merged map's")
        merged_id = first.map_id  # None (format-1 shards): a fresh id at save
    else:
        merged_id = new_map_id("merged", hashlib.sha256("\n".join(sessions).encode("utf-8")).hexdigest()[:8])
    out = PlaceMap.create(
        first.dim, first.model_fingerprint, index_type or first.index_type, map_frame or first.map_frame,
        merged_id, **(index_params or {}),
    )
    next_id = 0
    for members in groups:
        parts = [(kf, i, row) for i in members for row, kf in enumerate(maps[i].keyframes)]
        parts.sort(key=lambda p: p[0].id)
        stored = {i: np.asarray(maps[i].descriptors) for i in members}
        descriptors = np.zeros((len(parts), first.dim), np.float16)
        for j, (_, i, row) in enumerate(parts):
            descriptors[j] = stored[i][row]
        keyframes = []
        for kf, _, _ in parts:
            keyframes.append(kf if keep_ids else dataclasses.replace(kf, id=next_id))
            next_id += 1
        features = [maps[i].local_features(kf.id) for kf, i, _ in parts]
        out.add(descriptors.astype(np.float32), keyframes, features)
    for topic, (_, intrinsics) in cameras.items():
        out.set_camera(topic, intrinsics)
    if with_features:
        out.feature_config = dict(with_features[0][1].feature_config)

    seen = set()
    for m in maps:
        for source in m.sources:
            key = (source.get("name"), source.get("sha256"))
            if key not in seen:
                seen.add(key)
                out.sources.append(source)
    out.info = {
        "merged_from": [
            {"name": name, "map_id": session, "keyframes": len(m), "build_id": _shard_info(m)[0],
             "shard": {"index": _shard_info(m)[1], "count": _shard_info(m)[2]}}
            for name, m, session in zip(names, maps, sessions, strict=True)
        ]
    }
    if keep_ids and "build" in first.info:
        # A complete set of shards is the unsharded build.
        out.info["build"] = dict(first.info["build"], shard={"index": 0, "count": 1})
    return out


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="merge_maps", description=__doc__.split("\n\n")[0])
    parser.add_argument("maps", nargs="+", type=path_argument,
                        help="map folders (shards of one build and/or other sessions)")
    parser.add_argument("-o", "--output", required=True, type=path_argument, help="merged map folder to write")
    parser.add_argument("--map-frame", help="frame of the merged map; required when the inputs' frames differ")
    parser.add_argument("--map-id", help="id of the merged map (at most 64 UTF-8 bytes, not 'online'); default: "
                        "the build's for its shards, else 'merged-' + 8 hex digits of the inputs' ids")
    parser.add_argument("--model-fingerprint", help="refuse inputs built with another model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output map")
    add_index_arguments(parser)
    parser.set_defaults(index=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        if Path(args.output).exists() and not args.overwrite:
            raise MapError(f"output {args.output} exists; pass --overwrite to replace it")
        maps = [PlaceMap.load(path, args.model_fingerprint) for path in args.maps]
        params = index_params_from_args(argparse.Namespace(**{**vars(args), "index": args.index or "flat"})) \
            if args.index else {}
        merged = merge_maps(maps, args.maps, index_type=args.index, index_params=params, map_frame=args.map_frame,
                            map_id=args.map_id)
        merged.save(args.output)
    except MapError as err:
        print(f"merge_maps: error: {err}", file=sys.stderr)
        return 1
    print(f"merged {len(args.maps)} maps into {args.output}: {len(merged)} keyframes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
