"""vm-storage-reconciler: move KubeVirt VM disks between StorageClasses, declaratively.

Pipeline: plans -> observe -> diff -> render -> apply -> report. The pure core (model, plans,
rules, diff, render, report) never imports pykube; ``kube`` and ``observe.fetch`` are the I/O
edge.
"""

__version__ = "0.1.0"
