"""vm-storage-reconciler: move KubeVirt VM disks between StorageClasses, declaratively.

Pipeline, one package per stage: plans -> observe -> diff -> render -> (apply) -> report,
composed by ``engine`` and driven by ``cli``; ``model`` holds the values they exchange. Layers
are enforced by import-linter (pyproject ``[tool.importlinter]``): only ``kube`` speaks HTTP.
"""

import logging

__version__ = "0.1.0"

# A library's loggers stay silent unless the application configures logging (``--debug``):
# without this, Python's last-resort handler would print warnings to the user's stderr.
logging.getLogger(__name__).addHandler(logging.NullHandler())
