from tests.aio_fixtures import *  # noqa: F403
from tests.interop.conftest import interop_prefix, nameko_side  # noqa: F401
