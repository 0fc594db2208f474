"""JAX's persistent compilation cache as the entry points set it up (labelfree_jax.core.compilation_cache)."""

import os
import subprocess
import sys

from labelfree_jax.core.compilation_cache import cache_dir

SNIPPET = (
    "import jax, jax.numpy as jnp\n"
    "from labelfree_jax.core.compilation_cache import enable_compilation_cache\n"
    "enable_compilation_cache()\n"  # jax is imported, so this goes through jax.config
    "events = []\n"
    "jax.monitoring.register_event_listener(lambda e, **k: events.append(e))\n"
    "y = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.arange(4096.0).reshape(64, 64) / 4096)\n"
    "print(float(y), events.count('/jax/compilation_cache/cache_hits'), "
    "events.count('/jax/compilation_cache/cache_misses'))\n"
)
BEFORE_JAX = (  # the CLI's order: settings first (environment only), JAX imported afterwards
    "import sys\n"
    "from labelfree_jax.core.compilation_cache import enable_compilation_cache\n"
    "print(enable_compilation_cache(), 'jax' in sys.modules)\n"
    "import jax\n"
    "print(jax.config.jax_compilation_cache_dir)\n"
)


def _run(code, tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION") and k != "LABELFREE_COMPILATION_CACHE"}
    base.update({"LABELFREE_CACHE_DIR": str(tmp_path), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                 "JAX_PLATFORMS": "cpu"}, **env)
    return subprocess.Popen([sys.executable, "-c", code], env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _out(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out.split()


def test_second_process_loads_the_compiled_function_from_the_cache(tmp_path):
    value1, hits1, misses1 = _out(_run(SNIPPET, tmp_path))
    assert int(hits1) == 0 and int(misses1) >= 1
    assert any((tmp_path / "jax").iterdir())
    value2, hits2, misses2 = _out(_run(SNIPPET, tmp_path))
    assert int(hits2) >= 1 and int(misses2) == 0
    assert value1 == value2


def test_turned_off_by_the_environment(tmp_path):
    _, hits, misses = _out(_run(SNIPPET, tmp_path, LABELFREE_COMPILATION_CACHE="0"))
    assert int(hits) == 0 and int(misses) == 0
    assert not (tmp_path / "jax").exists()


def test_set_before_jax_is_imported_without_importing_it(tmp_path):
    path, jax_imported, configured = _out(_run(BEFORE_JAX, tmp_path))
    assert path == configured == str(tmp_path / "jax") and jax_imported == "False"


def test_two_processes_sharing_one_cache_at_once(tmp_path):
    procs = [_run(SNIPPET, tmp_path) for _ in range(3)]
    results = [_out(p) for p in procs]
    assert len({r[0] for r in results}) == 1
    # a fourth run finds complete entries (nothing half-written by the concurrent writers)
    value, hits, misses = _out(_run(SNIPPET, tmp_path))
    assert value == results[0][0] and int(hits) >= 1 and int(misses) == 0


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LABELFREE_CACHE_DIR", str(tmp_path / "lf"))
    assert cache_dir() == tmp_path / "lf" / "jax"
    monkeypatch.delenv("LABELFREE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "labelfree-jax" / "jax"
