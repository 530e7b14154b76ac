"""Env tests run under Gymnasium 1.x (the main venv) and 0.29.1 (``make test-gym029``).

Under 0.29 the vector env and ``gym.make_vec`` raise ``GymnasiumVersionError`` by design
(``test_gym_versions.py`` checks that error); a test here that reaches one is reported as
skipped, needing 1.x, rather than failed. Under 1.x that error fails the test like any other.
"""

from __future__ import annotations

import pytest

from oversight_gr.envs._compat import GYMNASIUM_1, GymnasiumVersionError


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    if GYMNASIUM_1 or outcome.excinfo is None:
        return
    if issubclass(outcome.excinfo[0], GymnasiumVersionError):
        outcome.force_exception(
            pytest.skip.Exception("needs gymnasium>=1.0 (vector API)", _use_item_location=True)
        )
