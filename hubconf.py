"""torch.hub entry points, offline:

    model = torch.hub.load("path/to/this/repo", "custom", path="runs/train/exp/weights/best.pt", source="local")
    results = model(["img1.jpg", cv2.imread("img2.jpg")])   # paths, BGR arrays, PIL images
    results.print(); results.save(); results.pandas().xyxy[0]   # a DataFrame per image
"""

dependencies = ["torch", "numpy", "cv2", "yaml"]


def custom(path: str, conf: float = 0.25, iou: float = 0.45, imgsz: int = 640, device: str = "",
           scale: bool = False, max_det: int = 1000):
    """A trained detector (.pt, .onnx or .torchscript) that takes images and returns Detections (engine/hub.py)."""
    from engine.hub import load_custom

    return load_custom(path, conf, iou, imgsz, device, scale, max_det)
