"""The ROS 2 edge: everything that imports rclpy lives here, and nothing below imports it.

- :mod:`.localize_node`: ``localize_node`` (wiring, callbacks, the inference thread, services);
- :mod:`.pose_graph_node`: ``pose_graph_node``, the GTSAM back end's edge;
- :mod:`.messages`: every conversion between ROS messages and the pure-Python types;
- :mod:`.diagnostics`: per-camera counters, ``/diagnostics``, silent-input and clock warnings;
- :mod:`.startup`: start-up checks and loading (model, map, device), :class:`~.startup.StartupError`;
- :mod:`.signals` and :mod:`.entry`: SIGINT/SIGTERM handling, taken before anything heavy is imported.

This package's ``__init__`` imports nothing, so :mod:`.entry` installs its signal handlers
before rclpy, torch or the message packages load.
"""
