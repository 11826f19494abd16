"""The allocator thresholds are raised once per process, and only where glibc has ``mallopt``."""

import ctypes
import platform

import pytest

from common import allocator


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(allocator, "_state", {})


def test_thresholds_are_raised_once(fresh, monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "_raise_thresholds", lambda: calls.append(1) or True)
    assert allocator.keep_freed_memory() and allocator.keep_freed_memory()
    assert calls == [1]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_thresholds(fresh):
    assert allocator.keep_freed_memory() is True


def test_no_mallopt_changes_nothing(fresh, monkeypatch):
    class NoMallopt:
        def __init__(self, _name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)  # a C library without mallopt (macOS, musl)
    assert allocator.keep_freed_memory() is False
