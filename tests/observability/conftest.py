from tests.aio.retrying import make_retrier, target  # noqa: F401
from tests.aio_fixtures import *  # noqa: F403
