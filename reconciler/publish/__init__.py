"""Tells the world, never decides: Events on each VM (``events``, through ``publisher``, the
run's Listener), the status ConfigMap (``status``) and Prometheus metrics (``metrics``)."""
