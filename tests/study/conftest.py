"""Study tests run torch on one thread (the CPU runners are shared); the sample corpus fixture is the top-level conftest's."""

from tests.tasks.tiny_model import one_thread  # noqa: F401
