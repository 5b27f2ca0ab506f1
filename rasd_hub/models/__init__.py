"""Registered architectures. Importing this package registers every entry point and, last, the
pretrained tags (``rasd_hub.pretrained``), which name those architectures."""

from rasd_hub.models._base import FeatureInfo
from rasd_hub.models.resenc import (
    RasdResEncUNet, RasdResEncUNetEncoder, rasd2d_resenc_small, rasd2d_resencl, rasd3d_resenc_small,
    rasd3d_resencl,
)
from rasd_hub.models.swin_unetr import (
    RasdSwinUNETR, RasdSwinUNETREncoder, rasd3d_swinb, rasd3d_swinh, rasd3d_swinl,
)
from rasd_hub.models.unet import RasdUNet, RasdUNetEncoder, rasd2d, rasd2d_small, rasd3d_small
from rasd_hub.models.classifier import RasdClassifier  # noqa: E402
import rasd_hub.pretrained  # noqa: E402,F401  (registers the tags; needs the architectures above)

__all__ = [
    "FeatureInfo", "RasdClassifier", "RasdResEncUNet", "RasdResEncUNetEncoder", "RasdSwinUNETR",
    "RasdSwinUNETREncoder", "RasdUNet", "RasdUNetEncoder",
    "rasd2d", "rasd2d_small", "rasd3d_small", "rasd3d_swinb", "rasd3d_swinl", "rasd3d_swinh",
    "rasd2d_resencl", "rasd3d_resencl", "rasd2d_resenc_small", "rasd3d_resenc_small",
]
