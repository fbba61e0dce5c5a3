"""Test environment: a real etcd + kube-apiserver with the KubeVirt/CDI CRDs, and a simulator.

Never imported by the ``reconciler`` package.
"""
