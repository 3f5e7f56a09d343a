"""Study tests run torch on one thread (the CPU runners are shared) and share the sample corpus fixture."""

from tests.tasks.tiny_model import one_thread  # noqa: F401
from tests.train.conftest import sample_corpus  # noqa: F401
