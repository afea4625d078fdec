"""BEiT layers, built only on keras.ops."""

from keras_beit.layers.attention import BEiTAttention
from keras_beit.layers.block import BEiTBlock
from keras_beit.layers.block import DropPath
from keras_beit.layers.patch_embedding import BEiTPatchEmbedding
from keras_beit.layers.relative_position_bias import BEiTRelativePositionBias
from keras_beit.layers.relative_position_bias import RelativePositionIndex
from keras_beit.layers.relative_position_bias import relative_position_index
from keras_beit.layers.pooler import BEiTPooler
from keras_beit.layers.feature_map import TokensToFeatureMap
from keras_beit.layers.adaptive_pooling import AdaptiveAveragePooling2D
from keras_beit.layers.batch_norm import BatchNormalization
from keras_beit.layers.fpn import BEiTFPNNeck
from keras_beit.layers.upernet import BEiTFCNHead
from keras_beit.layers.upernet import BEiTUperNetHead
from keras_beit.layers.upernet import ConvBNReLU
