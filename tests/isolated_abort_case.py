"""Not collected on its own (no test_ prefix): tests/test_parallel.py runs it to check that an isolated test
that aborts its process fails alone while the run goes on (tests/conftest.py)."""

import os

import pytest


@pytest.mark.isolated
def test_aborts():
    os.abort()  # as XLA's CPU runtime does when a collective rendezvous times out


def test_after_the_abort():
    assert True
