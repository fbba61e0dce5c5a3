"""Observe the cluster: one LIST per kind (``fetch``), parsed into a ``Snapshot`` (``parse``)."""
