"""Imported by pytest before any test module: qualitune first, so its OMP_WAIT_POLICY default
(`qualitune/__init__.py`) is in place before a test module's `import torch` loads libgomp."""

import qualitune  # noqa: F401
