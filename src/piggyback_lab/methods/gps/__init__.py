"""GPS, Gradient-based Parameter Selection (Zhang et al., CVPR 2024): before training, the
k input connections of largest accumulated gradient per output neuron of every weight of
the frozen backbone; only those and a new classifier train."""

from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.gps.config import GPSConfig
from piggyback_lab.methods.gps.module import GPS
from piggyback_lab.methods.gps.task import GPSTask
from piggyback_lab.methods.registry import register

register(GPSTask())
register_config("gps", GPSConfig)

__all__ = ["GPS", "GPSConfig", "GPSTask"]
