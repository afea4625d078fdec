"""Training recipes: layer-wise learning-rate decay and blockwise masking."""

from keras_beit.training.layer_decay import beit_fine_tuning_optimizer
from keras_beit.training.layer_decay import layer_decay_scales
from keras_beit.training.layer_decay import layer_id
from keras_beit.training.layer_decay import no_weight_decay_variables
from keras_beit.training.layer_decay import with_layer_decay
from keras_beit.training.masking import BlockwiseMaskGenerator
