"""Not collected on its own (no test_ prefix): tests/test_parallel.py runs it to check that an isolated test
that aborts its process fails alone while the run goes on (tests/conftest.py)."""

import os

import pytest


@pytest.mark.isolated
def test_isolated_failure():
    assert "reported" == "from the isolated process"  # an ordinary failure: the process goes on to the next


@pytest.mark.isolated
def test_aborts():
    os.abort()  # as XLA's CPU runtime does when a collective rendezvous times out


def test_after_the_abort():
    assert True


@pytest.mark.isolated
def test_isolated_after_the_abort():
    assert True  # runs in a new process: the one that aborted took no later test with it
