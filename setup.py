"""ament_python build of qaa_vpr_ros (also an ordinary pip-installable package)."""
from glob import glob

from setuptools import find_packages, setup

package_name = 'qaa_vpr_ros'
TRAINING = 'qaa_vpr_ros_training'

setup(
    name=package_name,
    version='0.1.0',
    # The training code installs under the package's own name (a top-level `training` would collide
    # in site-packages); in a checkout it stays `training/` (`python -m training.train`).
    packages=find_packages(exclude=['test', 'test.*', 'tests', 'tests.*', 'scripts', 'scripts.*',
                                    'training', 'training.*'])
    + [TRAINING] + [f'{TRAINING}.{sub}' for sub in find_packages('training')],
    package_dir={TRAINING: 'training'},
    package_data={TRAINING: ['configs/*.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
    ],
    python_requires='>=3.10',
    # Ranges for real users (a robot keeps its own torch); exact pins live in requirements-dev.txt.
    install_requires=[
        'setuptools',
        'numpy>=1.24',
        'torch>=2.1',
        'torchvision>=0.16',
        'timm>=0.9.16',
        'safetensors>=0.4',
        'faiss-cpu>=1.7.4',
        'rosbags>=0.10',
        'rosbags-image>=0.9',
        'opencv-python-headless>=4.8,<6',  # OpenCV 4.x and 5.x (CI tests verification on both)
        'pyyaml>=6.0',
        'tqdm>=4.60',
        'matplotlib>=3.7',
        'pillow>=9.0',
        'scipy>=1.8',  # KD-tree of keyframe positions (qaa_vpr_ros.decision.sequence)
        'threadpoolctl>=3.1',  # single-threaded BLAS in the decision (qaa_vpr_ros.decision.localizer)
    ],
    extras_require={
        'train': ['pytorch-metric-learning>=2.3', 'tensorboard>=2.14'],
        'onnx': ['onnx>=1.15', 'onnxruntime>=1.17', 'onnxscript>=0.1'],
        'test': ['pytest>=7', 'ruff>=0.4'],
        'slam': ['gtsam>=4.2', 'evo>=1.20'],  # pose_graph_node, the SLAM demo's trajectory error
        'ray': ['ray>=2.9'],  # build_map --ray, eval_map --ray (docs/MAPS.md)
    },
    zip_safe=True,
    maintainer='qaa_vpr_ros maintainers',
    maintainer_email='maintainers@qaa-vpr-ros.invalid',
    description='Visual place recognition (QAA, DINOv2) for ROS 2: maps, place matches, loop closures.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'localize_node = qaa_vpr_ros.ros.entry:main',  # SIGINT-safe from the first line
            'pose_graph_node = qaa_vpr_ros.ros.pose_graph_node:main',
            'build_map = qaa_vpr_ros.map_tools.build:main',
            'merge_maps = qaa_vpr_ros.map_tools.merge:main',
            'map_info = qaa_vpr_ros.map_tools.info:main',
            'eval_map = qaa_vpr_ros.map_tools.evaluate:main',
            'export_map = qaa_vpr_ros.map_tools.export:main',
            'export_onnx = qaa_vpr_ros.model.onnx_export:main',
        ],
    },
)
