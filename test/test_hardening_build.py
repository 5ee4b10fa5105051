"""Review finding (issue 11): build_map with an image topic whose messages never deserialise used
to build an empty map and exit 0; it must fail, naming the topic."""
from __future__ import annotations

from bag_writer import START_NS

from qaa_vpr_ros.bag_writer import BagWriter
from qaa_vpr_ros.map_tools.build import main as build_main

pytest_plugins = ["maps_fixtures"]  # fixtures: model_dir


def test_a_topic_that_never_deserialises_is_an_error_naming_it(tmp_path, model_dir, capsys):
    bag = tmp_path / "garbled"
    with BagWriter(bag) as writer:
        for i in range(5):  # not CDR of an Image
            writer.write_serialized("/cam_garbled", "sensor_msgs/msg/Image", START_NS + i * 10**8,
                                    b"\x00\x01\x00\x00" + b"\xff" * 7)
    out = tmp_path / "map"
    code = build_main([str(bag), "--model", str(model_dir), "--image-topics", "/cam_garbled", "-o", str(out),
                       "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert "/cam_garbled" in err and "deserialis" in err
    assert not out.exists()
