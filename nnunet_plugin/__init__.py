"""nnunet_plugin: nnU-Net v2 trainers that fine-tune networks initialised from RaSD weights."""
