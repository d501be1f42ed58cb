"""`python -m experiments.train`, counting the image rows this process reads from disk (streamed
views, `streaming.ImageView.read`): the count goes to the file $READS_FILE.<process index> at exit.
Used by tests/test_multihost.py to show each host reads only its own rows."""
import atexit
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages first

from absl import app  # noqa: E402

from ensembles import streaming  # noqa: E402
from experiments import train  # noqa: E402

_count = [0]
_lock = threading.Lock()
_read = streaming.ImageView.read


def counted_read(self, positions, transforms=None):
  with _lock:
    _count[0] += len(positions)
  return _read(self, positions, transforms)


def write_count():
  import jax  # pylint: disable=g-import-not-at-top
  with open(f"{os.environ['READS_FILE']}.{jax.process_index()}", "w") as f:
    f.write(str(_count[0]))


streaming.ImageView.read = counted_read
atexit.register(write_count)

if __name__ == "__main__":
  app.run(train.main, flags_parser=train.parse_flags)
