from tests.aio_fixtures import *  # noqa: F403
