"""Storage half of the simulator (placeholder while being written)."""

from testenv.simulator.core import Controller

CONTROLLERS: list[type[Controller]] = []
