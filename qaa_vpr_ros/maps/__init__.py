"""Place maps: the map format and its Python API, plus the tools that build and use maps.

``from qaa_vpr_ros.maps import PlaceMap, Keyframe, MapError, map_session`` is all the node needs; the
tools live in ``build``, ``merge``, ``info``, ``evaluate`` and ``export`` (see ``python -m qaa_vpr_ros.maps``).
"""
from qaa_vpr_ros.maps.place_map import (
    INDEX_TYPES,
    Keyframe,
    MapError,
    PlaceMap,
    SearchResult,
    map_session,
    read_manifest,
)

__all__ = ["INDEX_TYPES", "Keyframe", "MapError", "PlaceMap", "SearchResult", "map_session", "read_manifest"]
