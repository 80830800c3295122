"""Ray is optional: the single-machine path never imports it, and --ray without it says what to install."""

from __future__ import annotations

import json

from tests.test_package import run_python


def test_library_and_cli_do_not_import_ray():
    r = run_python(
        """
        import json, sys
        import pooledir, pooledir.cli, pooledir.build, pooledir.pooled_index, pooledir.shards
        print(json.dumps(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))))
        """
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_ray_flag_without_ray_installed_says_what_to_install(tmp_path, tiny_beir):
    for argv in (["encode", str(tiny_beir), "--out", str(tmp_path / "s"), "--ray"],):
        r = run_python(
            f"""
            import sys
            sys.modules["ray"] = None  # `import ray` now raises ImportError, as without the extra
            sys.argv = ["pooledir", *{argv!r}]
            from pooledir.cli import main
            main()
            """
        )
        assert r.returncode == 2, (argv, r.stderr)
        hint = 'Ray is not installed; install the distributed extra: pip install "pooledir[distributed]"'
        assert r.stderr.strip() == f"error: {hint}"
        assert not (tmp_path / "s").exists() and not (tmp_path / "i").exists()
