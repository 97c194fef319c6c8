"""Models: U-Net segmenter with stochastic decoders, ResNet / VGG backbones, SSL and cls heads."""

from osteo_jax.models.heads import LinearClassifier, Projector, Prototypes
from osteo_jax.models.mixture import Segmenter
from osteo_jax.models.resnet import (
    BasicBlock,
    BottleneckBlock,
    ResNet,
    ResNetStage,
    make_resnet,
    resnet18,
    resnet34,
    resnet50,
    resnet_features_dim,
)
from osteo_jax.models.unet import ConvBlock, Decoder, Encoder, Upsample, depth_to_space
from osteo_jax.models.vgg import VGG, VGGStage, make_vgg, vgg_features_dim

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "ConvBlock",
    "Decoder",
    "Encoder",
    "LinearClassifier",
    "Projector",
    "Prototypes",
    "ResNet",
    "ResNetStage",
    "Segmenter",
    "Upsample",
    "VGG",
    "VGGStage",
    "depth_to_space",
    "make_resnet",
    "make_vgg",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet_features_dim",
    "vgg_features_dim",
]
