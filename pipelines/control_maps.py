"""Control maps for the Depth and Canny tools, computed from a photo."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def canny_map(image: Image.Image, low: int, high: int) -> Image.Image:
    import cv2

    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(edges).convert("RGB")


def load_depth_estimator(path, device: torch.device):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(path)
    model = AutoModelForDepthEstimation.from_pretrained(path).to(device).eval()
    return processor, model


@torch.inference_mode()
def depth_map(image: Image.Image, estimator) -> Image.Image:
    """Relative depth, normalised to 0..255 (near is bright), at the image's size."""
    processor, model = estimator
    inputs = processor(images=image.convert("RGB"), return_tensors="pt").to(model.device)
    depth = model(**inputs).predicted_depth[:, None].float()
    depth = torch.nn.functional.interpolate(depth, size=(image.height, image.width), mode="bicubic")[0, 0]
    low, high = depth.min(), depth.max()
    scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
    return Image.fromarray((scaled.cpu().numpy() * 255).astype(np.uint8)).convert("RGB")
