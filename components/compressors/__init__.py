"""compressors: every module here registers itself into framework.core.registry on import."""

from components._discover import import_all

import_all(__name__, __path__)
