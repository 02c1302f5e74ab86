"""Flax architectures shared by the research lines.

Every architecture but the Llama decoder takes its layer classes (`conv`, `dense`) as
arguments, so that an approximate or quantized layer plugs in without this package
importing it. The Llama decoder loads pretrained checkpoints (`models.llama_io`), whose
adapters transform its params pytree instead.
"""

from models.cnn import MnistCNN
from models.llama import Llama, LlamaConfig
from models.resnet import ResNet, resnet20, resnet56
from models.transformer import DecoderLM
from models.vgg import VGG

__all__ = ["DecoderLM", "Llama", "LlamaConfig", "MnistCNN", "ResNet", "VGG", "resnet20", "resnet56"]
