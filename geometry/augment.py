"""Image augmentations for small grey images (scikit-learn's 8 × 8 digits), deterministic given a key.

    augment = ImageAugment(strength=1.0)
    views = augment(jax.random.key(0), images)   # images (N, 64), (N, H, W) or (N, H, W, 1)

One view per image, in this order: a rotation by θ ~ U(−θ_max, θ_max) about the image centre
and a shift t ~ U(−t_max, t_max)² pixels (one affine warp, bilinear, zero outside the image);
then a cut-out (a square of side c pixels set to 0 at a uniformly drawn position where it
fits); then Gaussian pixel noise of standard deviation σ (values are not clipped). At
`strength` s the parameters are θ_max = 15° · s, t_max = 1 px · s, σ = 0.1 · s, c = round(2 s)
(at most half the image side); s = 0 is the identity. Each image draws from its own key
(`jax.random.fold_in(key, i)`), so a view depends only on (key, row index, strength).
A frozen dataclass: hashable by value, so jitted code taking it as a static argument compiles
once per strength.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates


def warp(image: jax.Array, angle: jax.Array, shift: jax.Array) -> jax.Array:
    """image (H, W) rotated by `angle` radians about its centre (counter-clockwise as the array is
    printed, row 0 at the top: angle = π/2 is np.rot90(image, 1)), then shifted by `shift`
    (rows, columns) pixels; bilinear, zero outside."""
    height, width = image.shape
    centre_r, centre_c = (height - 1) / 2, (width - 1) / 2
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=image.dtype), jnp.arange(width, dtype=image.dtype),
                              indexing="ij")
    dr, dc = rows - centre_r - shift[0], cols - centre_c - shift[1]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # each output pixel reads the input at the inverse rotation of its offset from the centre
    source_r = cos * dr + sin * dc + centre_r
    source_c = -sin * dr + cos * dc + centre_c
    return map_coordinates(image, [source_r, source_c], order=1, mode="constant", cval=0.0)


def cutout(image: jax.Array, corner: jax.Array, side: int) -> jax.Array:
    """image (H, W) with the side × side square at `corner` (row, column) set to 0."""
    height, width = image.shape
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= corner[0]) & (rows < corner[0] + side) & (cols >= corner[1]) & (cols < corner[1] + side)
    return jnp.where(inside, jnp.zeros_like(image), image)


@dataclasses.dataclass(frozen=True)
class ImageAugment:
    strength: float = 1.0
    max_rotation_degrees: float = 15.0  # at strength 1
    max_shift: float = 1.0  # pixels, at strength 1
    noise: float = 0.1  # pixel standard deviation at strength 1 (digits' pixels are in [0, 1])
    cutout: float = 2.0  # square side in pixels at strength 1
    image_shape: tuple[int, int] = (8, 8)  # (H, W) of flattened (N, H·W) images

    def __post_init__(self):
        if not (math.isfinite(self.strength) and self.strength >= 0):
            raise ValueError(f"augmentation strength must be finite and >= 0, got {self.strength}")

    def one(self, key: jax.Array, image: jax.Array) -> jax.Array:
        """One view of one image (H, W)."""
        s = self.strength
        rotation_key, shift_key, corner_key, noise_key = jax.random.split(key, 4)
        max_angle = math.radians(self.max_rotation_degrees) * s
        angle = jax.random.uniform(rotation_key, (), image.dtype, -max_angle, max_angle)
        shift = jax.random.uniform(shift_key, (2,), image.dtype, -self.max_shift * s, self.max_shift * s)
        view = warp(image, angle, shift) if s > 0 else image
        side = min(int(round(self.cutout * s)), min(image.shape) // 2)
        if side > 0:
            corner = jax.random.randint(corner_key, (2,), 0, jnp.array(image.shape) - side + 1)
            view = cutout(view, corner, side)
        if self.noise * s > 0:
            view = view + self.noise * s * jax.random.normal(noise_key, image.shape, image.dtype)
        return view

    def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
        images = jnp.asarray(images)
        shape = images.shape
        if len(shape) == 2:  # (N, H·W) flattened
            height, width = self.image_shape
            if shape[1] != height * width:
                raise ValueError(f"flattened images of {shape[1]} pixels, but image_shape={self.image_shape}: pass "
                                 "(N, H, W) images or set image_shape")
            square = images.reshape(-1, height, width)
        elif len(shape) == 3 or (len(shape) == 4 and shape[-1] == 1):
            square = images.reshape(shape[:3])
        else:
            raise ValueError(f"images must be (N, H·W), (N, H, W) or (N, H, W, 1), got shape {shape}")
        if not jnp.issubdtype(square.dtype, jnp.floating):
            raise ValueError(f"images must be floating point, got dtype {square.dtype}")
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(shape[0]))
        return jax.vmap(self.one)(keys, square).reshape(shape)
