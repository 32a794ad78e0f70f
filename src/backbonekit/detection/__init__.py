"""Detection: detectors built on this package's backbones, and what trains and evaluates them.

The files read like a detection paper's sections: ``fpn`` (feature pyramids for torchvision's
detectors), and, as they land, ``neck``, ``head``, ``coder``, ``assigner``, ``loss``, ``data``,
``augment``, ``anchors``, ``metrics``.
"""

from .fpn import BackboneWithFPN, fpn_backbone

__all__ = ["BackboneWithFPN", "fpn_backbone"]
