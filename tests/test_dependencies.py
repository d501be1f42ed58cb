"""What setup.cfg declares and the lint checks of `make check`: every dependency has a tested lower
bound and no unexplained upper cap; the import-order check catches a misplaced import; the lowest
declared versions pass a representative part of the suite (`slow`: it builds its own environment)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import check_imports  # noqa: E402  pylint: disable=g-import-not-at-top
import check_min_versions  # noqa: E402  pylint: disable=g-import-not-at-top

# an upper cap needs a known break; none is known today (add the package and the reason here with the cap)
CAPS_WITH_REASONS: dict[str, str] = {}


def test_every_dependency_has_a_lower_bound_and_no_unexplained_cap():
  requirements = check_min_versions.requirements()
  assert len(requirements) >= 15
  for requirement in requirements:
    assert check_min_versions.lowest(requirement), f"{requirement}: no lower bound to test"
    name = check_min_versions.lowest(requirement).split("==")[0]
    assert "<" not in requirement or name in CAPS_WITH_REASONS, f"{requirement}: an upper cap without a known break"
  assert check_min_versions.lowest("jax[tpu]>=0.7.0,<2") == "jax==0.7.0"


def test_the_import_order_check_catches_a_misplaced_import(tmp_path):
  good = tmp_path / "good.py"
  good.write_text('"""Doc."""\nfrom __future__ import annotations\n\nimport os\nimport sys\nfrom typing import Any\n\n'
                  'import jax\nimport numpy as np\nfrom absl import app\n\nfrom ensembles import api\n'
                  'from ensembles.models import MLP\nfrom conftest import tiny_config\n\nx = 1\nimport abc\n')
  assert check_imports.problems(str(good)) == []  # an import after other code is left alone
  bad = tmp_path / "bad.py"
  bad.write_text("import sys\nimport os\n")
  assert check_imports.problems(str(bad)) == [
      f"{bad}:2: `import os` (standard library) belongs before line 1 `import sys`"
  ]
  bad.write_text("from ensembles import api\nimport numpy as np\n")
  assert "(third-party) belongs before line 1" in check_imports.problems(str(bad))[0]
  bad.write_text("from ensembles.models import MLP\nfrom ensembles import api\n")
  assert len(check_imports.problems(str(bad))) == 1
  bad.write_text("from ensembles.models import MLP\nfrom ensembles import api  # noqa: I001\n")
  assert check_imports.problems(str(bad)) == []  # exempt (the method registry's order)


@pytest.mark.slow
def test_the_lowest_declared_versions_pass_the_core_tests():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check_min_versions.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=3600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "jax==0.7.0" in out.stdout and "flax==0.11.0" in out.stdout
