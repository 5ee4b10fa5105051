"""Place-match and loop-closure decisions, free of ROS; one module per step.

- :mod:`~qaa_vpr_ros.decision.parameters`: the node's parameter table (:class:`LocalizeConfig`);
- :mod:`~qaa_vpr_ros.decision.odometry`: odometry history, the pose interpolated to an image stamp;
- :mod:`~qaa_vpr_ros.decision.gating`: which frames become queries (:class:`KeyframeGate`);
- :mod:`~qaa_vpr_ros.decision.sequence`: sequence evidence aligned by odometry (:class:`KeyframeTable`);
- :mod:`~qaa_vpr_ros.decision.decision`: hypotheses, confidence, accept (:class:`SequenceMatcher`);
- :mod:`~qaa_vpr_ros.decision.localizer`: the prebuilt map and the online database together (:class:`Localizer`);
- :mod:`~qaa_vpr_ros.decision.record`: the published loop-closure record and its table row;
- :mod:`~qaa_vpr_ros.decision.covariance`: the covariance a record carries;
- :mod:`~qaa_vpr_ros.decision.localization_state`: localized / lost, and when ``initialpose`` is due.
"""
from qaa_vpr_ros.decision.covariance import covariance_from_confidence
from qaa_vpr_ros.decision.decision import Candidate, ChannelResult, Hypotheses, SequenceMatcher
from qaa_vpr_ros.decision.gating import KeyframeGate
from qaa_vpr_ros.decision.localizer import Localizer, Query, QueryResult
from qaa_vpr_ros.decision.odometry import PoseHistory
from qaa_vpr_ros.decision.parameters import ConfigError, LocalizeConfig, ParamSpec, normalize, parameter_table
from qaa_vpr_ros.decision.sequence import KeyframeTable
from qaa_vpr_ros.poses import Pose, interpolate_pose

__all__ = [
    "Candidate",
    "ChannelResult",
    "ConfigError",
    "Hypotheses",
    "KeyframeGate",
    "KeyframeTable",
    "LocalizeConfig",
    "Localizer",
    "ParamSpec",
    "Pose",
    "PoseHistory",
    "Query",
    "QueryResult",
    "SequenceMatcher",
    "covariance_from_confidence",
    "interpolate_pose",
    "normalize",
    "parameter_table",
]
