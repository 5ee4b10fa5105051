"""The map store: keyframes, descriptors and a faiss index saved as one checked folder, plus spatial
thinning. Below the decision and the map tools (:mod:`qaa_vpr_ros.map_tools`); imports nothing above.

``from qaa_vpr_ros.maps import PlaceMap, Keyframe, MapError, map_session`` is all the node needs.
Modules: ``place_map`` (:class:`PlaceMap`), ``keyframe`` (the record and its table), ``index``
(the faiss index), ``format`` (manifest, versions, map id), ``errors``, ``thinning``.
"""
from qaa_vpr_ros.maps.errors import MapError, MapSaveError
from qaa_vpr_ros.maps.format import check_map_id, map_session, new_map_id, read_manifest
from qaa_vpr_ros.maps.index import INDEX_TYPES
from qaa_vpr_ros.maps.keyframe import Keyframe
from qaa_vpr_ros.maps.place_map import PlaceMap, SearchResult

__all__ = ["INDEX_TYPES", "Keyframe", "MapError", "MapSaveError", "PlaceMap", "SearchResult", "check_map_id",
           "map_session", "new_map_id", "read_manifest"]
