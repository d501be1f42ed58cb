"""The README's Python example runs as written."""
import os
import re

from conftest import requires_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@requires_fashion_mnist
def test_readme_python_example_runs():
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert blocks, "README has no Python example"
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)  # pylint: disable=exec-used
  probs = namespace["probs"]
  assert probs.shape == (4, 10000, 10)
  assert (probs.argmax(-1) == namespace["ds"].y_test).mean() > 0.7
