"""``backbonekit detect train | evaluate | compare``: the config (:mod:`.config`), building the detector
(:mod:`.build`), the run loop and resume (:mod:`.trainer`, on :mod:`backbonekit.engine`), one epoch
(:mod:`.engine`), COCO mAP (:mod:`.metrics`), reports (:mod:`.report`, :mod:`.evaluate`) and the comparison
of (detector, backbone) pairs (:mod:`.compare`)."""
