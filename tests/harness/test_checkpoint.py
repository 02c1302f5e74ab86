"""JSON results files hold only what every JSON parser reads."""

import json

import pytest

from harness import checkpoint


def test_json_writes_nan_and_infinity_as_null(tmp_path):
    path = tmp_path / "results.json"
    checkpoint.write_json_atomic(path, {"mean": float("nan"), "rows": [1.0, float("inf"), (2.0, -float("inf"))]})
    # json.loads calls parse_constant for NaN, Infinity and -Infinity, literals JSON does not define.
    loaded = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the file"))
    assert loaded == {"mean": None, "rows": [1.0, None, [2.0, None]]}
