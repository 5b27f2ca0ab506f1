"""rasd_hub: the RaSD model zoo (timm-style registry, safetensors weights, Hugging Face Hub)."""

__version__ = "0.1.0"
