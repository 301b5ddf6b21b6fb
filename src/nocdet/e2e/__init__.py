"""End-to-end setting (paper Sec. 4): Faster R-CNN with a NoC as its region-wise classifier.

``config`` (the config sections only this setting has: transform, RPN, RoI pooling), ``trunk``
(backbone variants of Table 8), ``roi_heads`` (sampling, pooling, NoC, loss, detections),
``model`` (:class:`~nocdet.e2e.model.NoCFasterRCNN` and :func:`~nocdet.e2e.model.build_e2e_model`).
"""
