"""Test environment: a real etcd + kube-apiserver with the KubeVirt/CDI CRDs, and the real
engine (upstream KubeVirt, CDI and Kubernetes controllers, our node side).

Never imported by the ``reconciler`` package.
"""
