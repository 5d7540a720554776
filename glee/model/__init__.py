"""GLEE-Net (Sec. III): global and local branches, 3D expression input, Transformer
classifier, and every ablation variant of Table V."""

from glee.model.classifier import MLPClassifier, TransformerClassifier
from glee.model.config import ABLATIONS, BACKBONES, CLASSIFIERS, GLEEConfig
from glee.model.glee_net import GLEENet, build_glee_net, count_parameters
from glee.model.global_branch import GlobalBranch, ResNetEncoder, SmallFaceNet
from glee.model.local_branch import CROP_NAMES, LocalBranch, crop_boxes, extract_crops
from glee.model.weights import load_facenet_weights, vggface2_path, vggface2_weights

__all__ = [
    "ABLATIONS",
    "BACKBONES",
    "CLASSIFIERS",
    "CROP_NAMES",
    "GLEEConfig",
    "GLEENet",
    "GlobalBranch",
    "LocalBranch",
    "MLPClassifier",
    "ResNetEncoder",
    "SmallFaceNet",
    "TransformerClassifier",
    "build_glee_net",
    "count_parameters",
    "crop_boxes",
    "extract_crops",
    "load_facenet_weights",
    "vggface2_path",
    "vggface2_weights",
]
