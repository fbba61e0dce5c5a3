"""The cluster edge: the only module that speaks HTTP (through pykube-ng)."""
