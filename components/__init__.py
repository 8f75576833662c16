"""All registered components. Importing this package registers every one of them, in one known place."""

from components import compressors, encoders, llms, mask_heads, projectors  # noqa: F401
