"""The real engine: upstream KubeVirt, CDI and Kubernetes controllers on the test control plane.

Beside etcd and kube-apiserver (``testenv.controlplane``) it runs kube-scheduler,
kube-controller-manager, KWOK (fake nodes), virt-api, virt-controller and cdi-controller,
built from the Go module proxy (``testenv.real.build``) and started by
``testenv.real.engine.RealEngine``; only the node side (virt-handler, the CDI worker pods, a
CSI provisioner) is ours (``testenv.node``).
"""
