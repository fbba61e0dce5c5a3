"""Test environment: control plane, CRDs and the cluster simulator."""
