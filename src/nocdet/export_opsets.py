"""The ONNX opsets ``nocdet export`` writes (a module without torch, so that ``nocdet --help`` stays fast)."""

#: ONNX ``Resize`` has ``antialias`` from opset 18 on: the lowest opset the graph can use.
MIN_OPSET = 18
#: The newest opset of torch's TorchScript exporter (``torch.onnx._constants``).
MAX_OPSET = 20
DEFAULT_OPSET = 18
