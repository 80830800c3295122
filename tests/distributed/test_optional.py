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
