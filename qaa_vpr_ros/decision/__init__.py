"""Place-match and loop-closure decisions, free of ROS; one module per step.

- :mod:`~qaa_vpr_ros.decision.parameters`: the node's parameter table (:class:`LocalizeConfig`);
- :mod:`~qaa_vpr_ros.decision.odometry`: odometry history, the pose at an image stamp;
- :mod:`~qaa_vpr_ros.decision.gating`: which frames become queries (:class:`KeyframeGate`);
- :mod:`~qaa_vpr_ros.decision.decision`: accept/reject of one query's candidates, covariance;
- :mod:`~qaa_vpr_ros.decision.localizer`: search the prebuilt map and the online database, decide.
"""
from qaa_vpr_ros.decision.decision import Candidate, ChannelResult, PlaceMatcher, covariance_from_score
from qaa_vpr_ros.decision.gating import KeyframeGate
from qaa_vpr_ros.decision.localizer import Localizer, Query, QueryResult
from qaa_vpr_ros.decision.odometry import Pose, PoseHistory
from qaa_vpr_ros.decision.parameters import ConfigError, LocalizeConfig, ParamSpec, normalize, parameter_table

__all__ = [
    "Candidate",
    "ChannelResult",
    "ConfigError",
    "KeyframeGate",
    "LocalizeConfig",
    "Localizer",
    "ParamSpec",
    "PlaceMatcher",
    "Pose",
    "PoseHistory",
    "Query",
    "QueryResult",
    "covariance_from_score",
    "normalize",
    "parameter_table",
]
