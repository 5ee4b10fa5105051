"""The map tools, above the store (:mod:`qaa_vpr_ros.maps`) and the decision: ``build``, ``merge``,
``info``, ``evaluate`` and ``export``, each a console script (``build_map``, ``merge_maps``,
``map_info``, ``eval_map``, ``export_map``) and a command of ``python -m qaa_vpr_ros.map_tools``.
"""
