"""jaxdd.compile_cache: which directory is used, and how it is turned off."""

from pathlib import Path

import jax
import pytest

from jaxdd import compile_cache


@pytest.fixture
def restore_jax_cache_config():
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_DIR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compile_cache.default_dir() == tmp_path / ".cache" / "jaxdd" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_dir() == tmp_path / "xdg" / "jaxdd" / "jax"
    monkeypatch.setenv(compile_cache.ENV_DIR, str(tmp_path / "mine"))
    assert compile_cache.default_dir() == tmp_path / "mine" / "jax"


def test_off_by_argument_or_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_OFF, raising=False)
    assert compile_cache.resolve(False) is None
    assert compile_cache.resolve(tmp_path) == tmp_path
    monkeypatch.setenv(compile_cache.ENV_OFF, "1")
    assert compile_cache.resolve(tmp_path) is None and compile_cache.enable(tmp_path) is None
    monkeypatch.setenv(compile_cache.ENV_OFF, "0")
    assert compile_cache.resolve(None) is not None


def test_enable_configures_jax(monkeypatch, tmp_path, restore_jax_cache_config):
    monkeypatch.delenv(compile_cache.ENV_OFF, raising=False)
    target = tmp_path / "a" / "b"
    assert compile_cache.enable(target, min_compile_seconds=0.3) == str(target)
    assert target.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(target)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.3
    # with no argument, a directory already configured in JAX is kept
    assert compile_cache.enable() == str(target)


def test_unwritable_directory_warns_and_disables(monkeypatch, tmp_path, restore_jax_cache_config):
    monkeypatch.delenv(compile_cache.ENV_OFF, raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    before = jax.config.jax_compilation_cache_dir
    with pytest.warns(UserWarning, match="compilation cache disabled"):
        assert compile_cache.enable(Path(blocker) / "sub") is None
    assert jax.config.jax_compilation_cache_dir == before


def test_compile_clock_counts_a_new_compilation_and_not_a_cached_call():
    import jax.numpy as jnp

    f = jax.jit(lambda x: jnp.tanh(x) * 3.0 + x.sum())
    before = compile_cache.compile_clock()
    f(jnp.ones(7)).block_until_ready()
    compiled = compile_cache.compile_clock()
    assert compiled["seconds"] > before["seconds"]
    f(jnp.ones(7)).block_until_ready()  # same shapes: no tracing, no compilation
    assert compile_cache.compile_clock()["seconds"] == compiled["seconds"]
    assert compile_cache.describe(dict(seconds=1.0, hits=0), dict(seconds=3.25, hits=2)) == \
        "compiled in 2.2 s (2 programs from the compilation cache)"
    assert compile_cache.describe(dict(seconds=0.0, hits=0), dict(seconds=4.0, hits=0)) == "compiled in 4.0 s"
