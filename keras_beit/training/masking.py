"""BEiT's blockwise masking of image patches for masked image modeling."""

import math

import numpy as np


class BlockwiseMaskGenerator:
    """Masks patches in random rectangular blocks, as the original BEiT does.

    Blocks of at least `min_block_patches` patches with an aspect ratio
    (log-uniform) between `min_aspect` and 1 / `min_aspect` are placed until
    `num_masked_patches` patches are masked or no block fits (up to 10 tries
    a block). The defaults are BEiT v1's: 75 of 196 patches, blocks of at
    least 16 patches, aspect ratio in [0.3, 1 / 0.3]. The same `seed` gives
    the same sequence of masks.

    Calling the generator returns one `(height, width)` boolean mask;
    `batch(n)` returns `(n, height * width)` in the row-major patch order the
    models use. tf.data or grain pipelines can draw a sample's mask with
    `mask_for(index)`, which depends only on the seed and the index.
    """

    def __init__(
        self,
        grid_size=(14, 14),
        num_masked_patches=75,
        min_block_patches=16,
        max_block_patches=None,
        min_aspect=0.3,
        max_aspect=None,
        seed=None,
    ):
        self.height, self.width = grid_size
        if not 0 < num_masked_patches <= self.height * self.width:
            raise ValueError(
                f"num_masked_patches must be in [1, {self.height * self.width}] for a "
                f"{self.height} x {self.width} grid; received {num_masked_patches}."
            )
        self.num_masked_patches = num_masked_patches
        self.min_block_patches = min_block_patches
        self.max_block_patches = max_block_patches or num_masked_patches
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        # mask_for depends on (this seed, index) only; unseeded, draw one, as the rng above does.
        self._mask_for_seed = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**63)

    def _place_block(self, mask, budget, rng):
        for _ in range(10):
            # Like Python's random.uniform, also when the budget is below the minimum.
            area = self.min_block_patches + (budget - self.min_block_patches) * rng.random()
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h < self.height and w < self.width:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                window = mask[top : top + h, left : left + w]
                added = h * w - int(window.sum())
                # A block must add something and must not overshoot the budget.
                if 0 < added <= budget:
                    window[...] = True
                    return added
        return 0

    def __call__(self, rng=None):
        rng = self.rng if rng is None else rng
        mask = np.zeros((self.height, self.width), bool)
        count = 0
        while count < self.num_masked_patches:
            budget = min(self.num_masked_patches - count, self.max_block_patches)
            added = self._place_block(mask, budget, rng)
            if added == 0:
                break
            count += added
        return mask

    def mask_for(self, index):
        """The mask of sample `index`, independent of call order (for parallel pipelines)."""
        return self(np.random.default_rng([self._mask_for_seed, index]))

    def batch(self, batch_size):
        """`(batch_size, height * width)` boolean masks."""
        return np.stack([self().reshape(-1) for _ in range(batch_size)])
