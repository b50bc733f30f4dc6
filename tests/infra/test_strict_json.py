"""infra/strict_json.py: what json.loads accepts but the renderer or BSON would refuse."""

import pytest

from infra.strict_json import StrictJSONError, loads, strict_json_problem


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": [1, "b", None, True, 1.5, {"c": -0.0}]}, None),
        ("\N{GRINNING FACE}\x00", None),  # NUL is JSON; the intake refuses it in inputs
        (2**63 - 1, None),
        (-(2**63), None),
        (2**63, "$: integers must fit in 64 bits"),
        ({"a": float("nan")}, "$.a: nan is not a JSON number"),
        ([1, [2, float("-inf")]], "$[1][1]: -inf is not a JSON number"),
        ({"a b": "\ud800"}, "$['a b']: strings must be valid Unicode (a lone surrogate at "),
        ({"\udfff": 1}, "$['\\udfff']: strings must be valid Unicode"),
        ({1: "a"}, "$[1]: object keys must be strings"),
        ([b"x"], "$[0]: a bytes is not a JSON value"),
        (("a", ["b"]), None),  # a tuple is an array
    ],
)
def test_it_names_the_first_problem_and_where(value, problem):
    found = strict_json_problem(value, max_depth=8)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found


def test_depth_counts_containers():
    assert strict_json_problem([[["x"]]], max_depth=3) is None
    assert (
        strict_json_problem([[[["x"]]]], max_depth=3) == "$[0][0][0]: nested deeper than 3 levels"
    )
    assert strict_json_problem("x", max_depth=0) is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not UTF-8"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
        (b'\xef\xbb\xbf{"a": 1}', "BOM"),
        (b'{"a": NaN}', "nan is not a JSON number"),
        (b'{"a": 1e400}', "inf is not a JSON number"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32 levels"),
        (b"{", "Expecting property name"),
    ],
)
def test_loads_refuses_what_is_not_strict(data, message):
    with pytest.raises(StrictJSONError, match=message):
        loads(data, max_depth=32)


def test_loads_reads_strict_json():
    assert loads(b'{"a": "\\ud83d\\ude00", "b": [1.5e300]}', max_depth=2) == {
        "a": "\N{GRINNING FACE}",
        "b": [1.5e300],
    }
