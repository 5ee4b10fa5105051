"""The one ``"TOPIC numbers...; TOPIC numbers..."`` grammar of camera_extrinsics and camera_intrinsics."""
from __future__ import annotations

import re

import numpy as np
import pytest

from qaa_vpr_ros.decision.record import parse_extrinsics
from qaa_vpr_ros.parameter_grammar import parse_topic_numbers
from qaa_vpr_ros.verification import Intrinsics, parse_intrinsics


def test_entries_are_split_on_semicolons_and_blank_ones_ignored():
    text = " /front 1 2 3 ;; /rear\t-4 5e-1 6 ; "
    assert parse_topic_numbers(text, "p", "'TOPIC a b c'", 3) == {"/front": (1.0, 2.0, 3.0), "/rear": (-4.0, 0.5, 6.0)}
    assert parse_topic_numbers("  ;  ", "p", "'TOPIC a'", 1) == {}


def test_more_allows_extra_numbers_and_convert_gives_the_values():
    parsed = parse_topic_numbers("/a 1 2; /b 1 2 3 4", "p", "'TOPIC x y [z...]'", 2, more=True, convert=sum)
    assert parsed == {"/a": 3.0, "/b": 10.0}


@pytest.mark.parametrize("text, reason", [
    ("/a 1 2", "2 numbers given, 3 needed"),
    ("/a 1 2 3 4", "4 numbers given, 3 needed"),
    ("/ok 1 2 3; /a 1 two 3", "could not convert string to float: 'two'"),
])
def test_an_error_names_the_parameter_the_entry_and_the_form(text, reason):
    entry = text.split(";")[-1].strip()
    with pytest.raises(ValueError) as err:
        parse_topic_numbers(text, "camera_things", "'TOPIC a b c'", 3)
    assert str(err.value) == f"camera_things entry {entry!r}: expected 'TOPIC a b c': {reason}"


def test_a_rejected_value_is_reported_with_its_entry():
    def positive(values: tuple[float, ...]) -> tuple[float, ...]:
        if min(values) <= 0:
            raise ValueError("values must be > 0")
        return values

    with pytest.raises(ValueError, match=r"^p entry '/a 1 -1': expected 'TOPIC u v': values must be > 0$"):
        parse_topic_numbers("/a 1 -1", "p", "'TOPIC u v'", 2, convert=positive)


def test_both_camera_parameters_read_the_one_grammar():
    extrinsics = parse_extrinsics("/front 1 0 0 0 0 0 1; /rear -1 0 0 0 0 1 0")
    assert set(extrinsics) == {"/front", "/rear"} and np.allclose(extrinsics["/rear"][:2, :2], -np.eye(2))
    assert parse_intrinsics("/front 500 510 320 240 0.1 -0.2") == {
        "/front": Intrinsics(500.0, 510.0, 320.0, 240.0, (0.1, -0.2))}
    # The same kinds of mistakes give the same kinds of messages for both parameters.
    for parse, name, entry, form in ((parse_extrinsics, "camera_extrinsics", "/front 1 x 0 0 0 0 1",
                                      "'TOPIC x y z qx qy qz qw'"),
                                     (parse_intrinsics, "camera_intrinsics", "/front 500 x 320 240",
                                      "'TOPIC fx fy cx cy [distortion...]'")):
        with pytest.raises(ValueError, match=rf"^{name} entry {re.escape(repr(entry))}: expected {re.escape(form)}"
                                             r".*: could not convert string to float: 'x'$"):
            parse(entry)
    with pytest.raises(ValueError, match=r"^camera_extrinsics entry .*: values must be finite and the quaternion unit"):
        parse_extrinsics("/front 1 0 0 0 0 0 2")
    with pytest.raises(ValueError, match=r"^camera_intrinsics entry .*: intrinsics fx=0.0.*focal lengths must be"):
        parse_intrinsics("/front 0 510 320 240")
