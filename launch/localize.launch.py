"""Start qaa_vpr_ros localize_node: live place matches and loop closures.

    ros2 launch qaa_vpr_ros localize.launch.py model:=/path/to/model map:=/path/to/map \\
        image_topics:='[/front/image_raw, /rear/image_raw/compressed]' odom_topic:=/odom device:=cuda
    ros2 launch qaa_vpr_ros localize.launch.py model:=M map:=MAP image_topics:=/camera/rgb/image_raw \\
        depth_topics:=/camera/depth/image_raw odom_topic:=/odom        # RGB-D: metric loop closures
    ros2 launch qaa_vpr_ros localize.launch.py --show-args    # every argument, documented

Parameters come from ``params_file`` (default: the installed ``config/localize.yaml``); the
arguments below override it only when given (non-empty). Map building has no node: run
``ros2 run qaa_vpr_ros build_map --help`` (see docs/NODE.md).
"""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from qaa_vpr_ros.paths import expand_path

PACKAGE = 'qaa_vpr_ros'


def _image_topics(text):
    """'[/a, /b]' (YAML list) or '/a,/b' (comma-separated) -> ['/a', '/b']."""
    text = text.strip()
    if text.startswith('['):
        value = yaml.safe_load(text)
        if not isinstance(value, list):
            raise ValueError(f'image_topics:={text!r} is not a list; write [/a, /b] or /a,/b')
        items = [str(v) for v in value]
    else:
        items = text.split(',')
    return [t.strip() for t in items if t.strip()]


def _depth_topics(text):
    """'[/a/depth, ""]' (YAML list) or '/a/depth,' (comma-separated): one entry per image topic, in
    the same order; an empty entry is a camera without depth."""
    text = text.strip()
    if text.startswith('['):
        value = yaml.safe_load(text)
        if not isinstance(value, list):
            raise ValueError(f'depth_topics:={text!r} is not a list; write [/a/depth, /b/depth] or /a/depth,/b/depth')
        items = ['' if v is None else str(v) for v in value]
    else:
        items = text.split(',')
    return [t.strip() for t in items]


def _flag(name, text):
    value = text.lower()
    if value not in ('true', 'false', '1', '0', 'yes', 'no'):
        raise ValueError(f'{name}:={text!r} is not a boolean; write true or false')
    return value in ('true', '1', 'yes')


def _launch_setup(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context).strip()

    overrides = {'use_sim_time': _flag('use_sim_time', arg('use_sim_time'))}
    for name in ('map', 'model', 'device', 'odom_topic'):
        if arg(name):
            overrides[name] = arg(name)
    for name in ('min_score', 'min_confidence'):
        if arg(name):
            try:
                overrides[name] = float(arg(name))
            except ValueError:
                raise ValueError(f'{name}:={arg(name)!r} is not a number') from None
    if arg('image_topics'):
        overrides['image_topics'] = _image_topics(arg('image_topics'))
    if arg('depth_topics'):
        overrides['depth_topics'] = _depth_topics(arg('depth_topics'))
    if arg('camera_intrinsics'):
        overrides['camera_intrinsics'] = arg('camera_intrinsics')
    params_file = str(expand_path(arg('params_file')))  # ~ and $VARS; the node expands map/model itself
    if not os.path.isfile(params_file):
        raise FileNotFoundError(f'params_file:={params_file!r} does not exist; give a YAML file with '
                                f'"/**: ros__parameters:" (see config/localize.yaml)')
    node = Node(
        package=PACKAGE,
        executable='localize_node',
        name='localize_node',
        namespace=arg('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[params_file, overrides],
        ros_arguments=['--log-level', arg('log_level')],
        # The node exits non-zero on fatal start-up errors (missing model/map, no CUDA), so a
        # respawn retries them too; each retry logs the same one-line error.
        respawn=_flag('respawn', arg('respawn')),
        respawn_delay=2.0,
    )
    return [node]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), 'config', 'localize.yaml')
    arguments = [
        DeclareLaunchArgument(
            'map', default_value='',
            description='Prebuilt map folder (from build_map). Empty: the params file value '
                        '(default: online loop closure only).'),
        DeclareLaunchArgument(
            'model', default_value='',
            description='Model folder or .pt/.pth/.ckpt file for qaa_vpr_ros.model.load_model. '
                        'Empty: the params file value.'),
        DeclareLaunchArgument(
            'params_file', default_value=default_params,
            description='YAML parameter file for localize_node (default: installed config/localize.yaml).'),
        DeclareLaunchArgument(
            'image_topics', default_value='',
            description="Camera topics as a YAML list '[/a, /b]' or comma-separated '/a,/b'. "
                        'Empty: the params file value.'),
        DeclareLaunchArgument(
            'depth_topics', default_value='',
            description="Registered depth image topics (16UC1 mm or 32FC1 m), one per image topic in the same "
                        "order, as '[/a/depth, /b/depth]' or '/a/depth,/b/depth' ('' for a camera without "
                        'depth): metric loop closures and relocalization. Empty: the params file value.'),
        DeclareLaunchArgument(
            'camera_intrinsics', default_value='',
            description="Intrinsics where no camera_info is published beside an image topic: "
                        "'TOPIC fx fy cx cy [k1 k2 p1 p2 k3]; ...'. Empty: the params file value."),
        DeclareLaunchArgument(
            'device', default_value='',
            description='Inference device: auto, cpu or cuda. Empty: the params file value.'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node (its topics become <namespace>/localize_node/...).'),
        DeclareLaunchArgument(
            'odom_topic', default_value='',
            description='nav_msgs/Odometry topic for keyframe poses and motion gating, e.g. /odom. '
                        'Empty: the params file value (default: no odometry).'),
        DeclareLaunchArgument(
            'min_score', default_value='',
            description='Smallest descriptor similarity in [-1, 1] a candidate needs. '
                        'Empty: the params file value.'),
        DeclareLaunchArgument(
            'min_confidence', default_value='',
            description='Confidence threshold of an accepted place match / loop closure (raise it for '
                        'fewer, surer loop closures). Empty: the params file value.'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false',
            description='Use the /clock topic (true when playing a bag with --clock).'),
        DeclareLaunchArgument(
            'log_level', default_value='info',
            description='Log level of the node: debug, info, warn, error or fatal.'),
        DeclareLaunchArgument(
            'respawn', default_value='false',
            description='Restart the node (after 2 s) whenever it exits, including after a fatal '
                        'start-up error; false: launch reports the exit and the node stays down.'),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_launch_setup)])
