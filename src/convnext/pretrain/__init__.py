"""Self-supervised pretraining: ConvNeXt V2's FCMAE (fully convolutional masked autoencoder)."""

from .fcmae import FCMAE, build_fcmae, encoder_state_dict, fcmae_loss

__all__ = ["FCMAE", "build_fcmae", "encoder_state_dict", "fcmae_loss"]
