"""select_detections: the one post-processing of both settings, on hand-made cases."""
import torch

from nocdet.postprocess import MIN_BOX_SIZE, PostprocessConfig, select_detections


def test_clip_threshold_min_size_nms_and_cap():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # kept (best of its NMS group)
                          [1.0, 1.0, 10.0, 10.0],     # IoU 0.81 with the first: suppressed
                          [20.0, 20.0, 20.005, 30.0],  # narrower than MIN_BOX_SIZE: dropped
                          [20.0, 20.0, 20.02, 30.0],  # just wider: kept
                          [-5.0, 40.0, 8.0, 60.0]])   # clipped to x1 = 0, y2 = 50
    scores = torch.tensor([[0.9], [0.8], [0.95], [0.3], [0.04]])  # the last is under the threshold
    config = PostprocessConfig(nms_iou=0.5, max_detections=10, score_threshold=0.05)
    kept, kept_scores, labels = select_detections(boxes, scores, width=100, height=50, config=config)
    assert torch.allclose(kept, torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 20.02, 30.0]]))
    assert torch.allclose(kept_scores, torch.tensor([0.9, 0.3])) and labels.tolist() == [1, 1]
    assert MIN_BOX_SIZE == 1e-2  # torchvision's remove_small_boxes(boxes, 1e-2), which the e2e head used


def test_cap_of_the_image_or_of_each_class():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 0.0, 60.0, 10.0], [0.0, 30.0, 10.0, 40.0]])
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.6]])  # class 1 everywhere above class 2
    image = select_detections(boxes, scores, 100, 100, PostprocessConfig(max_detections=2))
    assert image[2].tolist() == [1, 1]
    per_class = select_detections(boxes, scores, 100, 100, PostprocessConfig(max_detections=2, cap="class"))
    assert torch.allclose(per_class[1], torch.tensor([0.9, 0.8, 0.6, 0.2]))  # two per class, by score
    assert per_class[2].tolist() == [1, 1, 2, 2]
