"""Registered architectures. Importing this package registers every entry point."""

from rasd_hub.models._base import FeatureInfo
from rasd_hub.models.swin_unetr import (
    RasdSwinUNETR, RasdSwinUNETREncoder, rasd3d_swinb, rasd3d_swinh, rasd3d_swinl,
)
from rasd_hub.models.unet import RasdUNet, RasdUNetEncoder, rasd2d, rasd2d_small, rasd3d_small

__all__ = [
    "FeatureInfo", "RasdSwinUNETR", "RasdSwinUNETREncoder", "RasdUNet", "RasdUNetEncoder",
    "rasd2d", "rasd2d_small", "rasd3d_small", "rasd3d_swinb", "rasd3d_swinl", "rasd3d_swinh",
]
