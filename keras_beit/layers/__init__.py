"""BEiT layers, built only on keras.ops."""

from keras_beit.layers.attention import BEiTAttention
from keras_beit.layers.block import BEiTBlock
from keras_beit.layers.block import DropPath
from keras_beit.layers.patch_embedding import BEiTPatchEmbedding
from keras_beit.layers.relative_position_bias import BEiTRelativePositionBias
from keras_beit.layers.relative_position_bias import relative_position_index
from keras_beit.layers.pooler import BEiTPooler
