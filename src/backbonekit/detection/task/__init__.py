"""What turns ground-truth boxes into YOLOv3's training signal, as the paper's section 2 reads: the anchors
(:mod:`.anchors`), which anchor answers for which box (:mod:`.assigner`), the box encoding (:mod:`.coder`)
and the loss (:mod:`.loss`)."""
