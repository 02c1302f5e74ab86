"""Debate on MNIST before a sparse-pixel judge (Irving, Christiano and Amodei, arXiv:1805.00899).

Glossary:

- judge: a classifier (an MLP or a small CNN, `build_judge`) that receives only k revealed pixels of a 28 x 28 image, as two input
  channels (the mask of revealed pixels, and the image times that mask), trained with k
  pixels drawn at random among the image's nonzero pixels.
- game: two debaters precommit to labels, the honest one to the true label and the liar
  to a wrong one, then take turns revealing one pixel each until k are revealed
  (the honest debater moves first unless `honest_first` is off). Revealed pixels are
  true. The judge then compares its logits of the two labels, and the higher one wins.
- debate accuracy: the share of images on which the honest debater wins the games
  against every wrong label (nine for MNIST), so the liar wins an image if any lie wins.
- search: each move runs PUCT Monte Carlo tree search (`mctx.muzero_policy`) over the
  unrevealed nonzero pixels. The prior at each node is a softmax over each pixel's
  first-order gain for the mover: the gradient of the judge's margin with respect to a
  relaxed mask, standardised over the legal pixels. A game's end is scored by the judge
  (+1 or -1 for the mover); a position before the end is valued by the judge on the
  pixels revealed so far, tanh(margin / 2) from the honest side, where margin is the
  logit of the honest label minus that of the lie. All games of a batch search together.

The paper's judge saw 6 or 4 pixels and its accuracy rose from 59.4% to 88.9% and from
48.2% to 85.2% with debate; its debaters ran 10,000 rollouts per move.
"""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import mctx
import numpy as np

from align import losses, training
from models import MLP, MnistCNN

IMAGE_SHAPE = (28, 28, 1)
NUM_PIXELS = 28 * 28


def check_pixels(pixels):
    """Raise ValueError unless 1 <= pixels <= 784."""
    if not isinstance(pixels, (int, np.integer)) or not 1 <= pixels <= NUM_PIXELS:
        raise ValueError(f"pixels={pixels!r} is outside the valid range 1 to {NUM_PIXELS}.")


def sparse_input(images, mask):
    """Build the judge's view of images with some pixels revealed.

    Args:
      images: float32 [B, 28, 28, 1] in [0, 1].
      mask: bool or float [B, 784], 1 (True) where a pixel is revealed.

    Returns:
      float32 [B, 28, 28, 2]: the mask, and the image times the mask.
    """
    chex.assert_shape(mask, (images.shape[0], NUM_PIXELS))
    revealed = mask.reshape(images.shape).astype(jnp.float32)
    return jnp.concatenate([revealed, images * revealed], axis=-1)


def random_mask(key, images, pixels):
    """Draw `pixels` distinct nonzero pixels per image uniformly; returns bool [B, 784].

    An image with fewer nonzero pixels than `pixels` gets all of them plus random zero
    pixels.

    Args:
      key: PRNG key.
      images: float [B, 28, 28, 1].
      pixels: revealed pixels per image, 1 to 784 (static).
    """
    flat = images.reshape(images.shape[0], NUM_PIXELS)
    scores = jax.random.gumbel(key, flat.shape) + jnp.where(flat > 0, 0.0, -1e6)
    _, chosen = jax.lax.top_k(scores, pixels)
    return jnp.any(jax.nn.one_hot(chosen, NUM_PIXELS, dtype=bool), axis=1)


@dataclasses.dataclass(frozen=True)
class RandomReveal:
    """Input preparation of judge training: uint8 images -> the view of k random nonzero pixels."""

    pixels: int

    def __call__(self, key, images):
        if key is None:
            raise ValueError("RandomReveal draws random pixels and needs a PRNG key, got None.")
        x = images.astype(jnp.float32) / 255.0
        return sparse_input(x, random_mask(key, x, self.pixels))


JUDGES = ("mlp", "cnn")


def build_judge(kind="mlp"):
    """Build the judge network, which reads the two-channel sparse view.

    "mlp": two hidden layers of 512 and 256 units. "cnn": a small CNN with batch norm
    (16 and 32 channels, 64 hidden units). On a CPU the MLP trains and searches several
    times faster: XLA runs convolutions inside the search's loops slowly.
    """
    if kind == "mlp":
        return MLP(num_classes=10, hidden=(512, 256), dense=nn.Dense)
    if kind == "cnn":
        return MnistCNN(num_classes=10, widths=(16, 32), hidden=64, conv=nn.Conv, dense=nn.Dense)
    raise ValueError(f"unknown judge {kind!r}; valid judges are {JUDGES}.")


def train_judge(images, labels, *, pixels, options, model, checkpoint_dir=None):
    """Train `model` to classify uint8 images [N, 28, 28, 1] from `pixels` random nonzero pixels.

    Returns:
      the judge's inference variables.
    """
    check_pixels(pixels)
    return training.fit(model, images, training.one_hot(labels, 10), options, loss=losses.SoftCrossEntropy(),
                        prepare=RandomReveal(pixels), checkpoint_dir=checkpoint_dir, desc=f"judge k={pixels}")


def random_pixel_accuracy(model, variables, images, labels, *, pixels, key, batch_size=500):
    """Measure the judge's accuracy on uint8 images with `pixels` random nonzero pixels revealed each."""
    check_pixels(pixels)

    @jax.jit
    def correct(batch_key, batch, batch_labels):
        x = batch.astype(jnp.float32) / 255.0
        logits = model.apply(variables, sparse_input(x, random_mask(batch_key, x, pixels)), train=False)
        return jnp.argmax(logits, axis=-1) == batch_labels

    batch_keys = jax.random.split(key, -(-len(images) // batch_size))
    hits = [
        np.asarray(correct(batch_keys[i], images[start : start + batch_size], labels[start : start + batch_size]))
        for i, start in enumerate(range(0, len(images), batch_size))
    ]
    return float(np.mean(np.concatenate(hits)))


# --------------------------------------------------------------------------------------
# The debate game


@dataclasses.dataclass(frozen=True, kw_only=True)
class GameSettings:
    """Rules and search budget of a debate.

    Attributes:
      pixels: pixels revealed in a game, alternately by the two debaters (1 to 784).
      simulations: MCTS simulations per move.
      honest_first: the honest debater reveals the first pixel.
      exploration: PUCT constant c (mctx's pb_c_init).
      prior_sharpness: scale of the standardised first-order gains in the prior logits;
        0 gives a uniform prior over the legal pixels.
    """

    pixels: int
    simulations: int = 100
    honest_first: bool = True
    exploration: float = 1.25
    prior_sharpness: float = 2.0

    def __post_init__(self):
        check_pixels(self.pixels)
        if self.simulations < 1:
            raise ValueError(f"simulations={self.simulations} must be at least 1.")


def _margin(model, params, mask):
    """Logit of the honest label minus that of the lie, [G], on the revealed pixels (mask [G, 784])."""
    logits = model.apply(params["judge"], sparse_input(params["images"], mask), train=False)
    rows = jnp.arange(logits.shape[0])
    return logits[rows, params["honest"]] - logits[rows, params["liar"]]


def _margin_and_slope(model, params, mask):
    """Compute the margin [G] and its gradient [G, 784] with respect to a relaxed, real-valued mask.

    The gradient estimates, to first order, how much revealing each pixel would move the
    margin toward the honest label.
    """
    def total(relaxed):
        margin = _margin(model, params, relaxed)
        return jnp.sum(margin), margin

    slope, margin = jax.grad(total, has_aux=True)(mask.astype(jnp.float32))
    return margin, slope


def _legal(params, mask):
    return (params["images"].reshape(mask.shape) > 0) & ~mask


def _honest_moves(moves, honest_first):
    """Return whether the debater to move after `moves` reveals is the honest one."""
    return (moves % 2 == 0) == honest_first


@functools.lru_cache(maxsize=8)
def _game_player(model, settings):
    """Build the jitted function that plays a batch of games to the end; see `play_games`."""
    pixels = settings.pixels

    def prior_logits(params, mask, slope, mover_sign):
        # A softmax over the mover's standardised first-order gains among legal pixels.
        legal = _legal(params, mask)
        gain = mover_sign[:, None] * slope
        count = jnp.maximum(jnp.sum(legal, axis=1, keepdims=True), 1)
        mean = jnp.sum(jnp.where(legal, gain, 0.0), axis=1, keepdims=True) / count
        spread = jnp.sqrt(jnp.sum(jnp.where(legal, (gain - mean) ** 2, 0.0), axis=1, keepdims=True) / count)
        standardised = (gain - mean) / (spread + 1e-6)
        return jnp.where(legal, settings.prior_sharpness * standardised, -1e9)

    def recurrent_fn(params, rng, action, embedding):
        del rng
        mask = embedding["mask"] | jax.nn.one_hot(action, NUM_PIXELS, dtype=bool)
        moves = embedding["moves"] + 1
        mover_sign = jnp.where(_honest_moves(embedding["moves"], settings.honest_first), 1.0, -1.0)
        margin, slope = _margin_and_slope(model, params, mask)
        terminal = moves >= pixels
        # The judge scores the end +1 or -1 for the mover. Before the end, the judge's
        # current margin values the position for the next mover, the mover's opponent.
        reward = jnp.where(terminal, mover_sign * jnp.sign(margin), 0.0)
        value = jnp.where(terminal, 0.0, -mover_sign * jnp.tanh(margin / 2))
        output = mctx.RecurrentFnOutput(
            reward=reward, discount=jnp.where(terminal, 0.0, -1.0),
            prior_logits=prior_logits(params, mask, slope, -mover_sign), value=value,
        )
        return output, {"mask": mask, "moves": moves}

    def play(params, key):
        games = params["images"].shape[0]
        move_keys = jax.random.split(key, pixels)

        def move(index, mask):
            moves = jnp.full((games,), index, jnp.int32)
            sign = jnp.where(_honest_moves(moves, settings.honest_first), 1.0, -1.0)
            margin, slope = _margin_and_slope(model, params, mask)
            root = mctx.RootFnOutput(
                prior_logits=prior_logits(params, mask, slope, sign),
                value=sign * jnp.tanh(margin / 2),
                embedding={"mask": mask, "moves": moves},
            )
            output = mctx.muzero_policy(
                params, move_keys[index], root, recurrent_fn, num_simulations=settings.simulations,
                invalid_actions=~_legal(params, mask), max_depth=pixels - index,
                dirichlet_fraction=0.0, pb_c_init=settings.exploration, temperature=0.0,
            )
            return mask | jax.nn.one_hot(output.action, NUM_PIXELS, dtype=bool)

        mask = jax.lax.fori_loop(0, pixels, move, jnp.zeros((games, NUM_PIXELS), bool))
        return mask, _margin(model, params, mask) > 0

    return jax.jit(play)


def play_games(model, variables, images, honest_labels, liar_labels, settings, key):
    """Play one debate per row and return (revealed mask bool [G, 784], honest wins bool [G]).

    Args:
      model, variables: the judge.
      images: uint8 [G, 28, 28, 1].
      honest_labels, liar_labels: int [G], the two precommitted labels (must differ).
      settings: `GameSettings`.
      key: PRNG key of the search's tie-breaking.
    """
    honest_labels, liar_labels = np.asarray(honest_labels), np.asarray(liar_labels)
    if np.any(honest_labels == liar_labels):
        raise ValueError("a liar's label equals the honest label in some game; the labels must differ.")
    params = {
        "judge": variables,
        "images": jnp.asarray(images, jnp.float32) / 255.0,
        "honest": jnp.asarray(honest_labels, jnp.int32),
        "liar": jnp.asarray(liar_labels, jnp.int32),
    }
    # NOTE: mctx 0.0.71 passes one key to both branches of a lax.cond, which vmap turns
    # into a select, so JAX's key-reuse checker reports reuse although only one branch's
    # result is kept. The check is turned off for the search alone.
    with jax.debug_key_reuse(False):
        mask, wins = _game_player(model, settings)(params, key)
    return np.asarray(mask), np.asarray(wins)


def debate_accuracy(model, variables, images, labels, settings, key, *, images_per_batch=16):
    """Debate every image against all nine lies and measure how often the honest side wins them all.

    The games of `images_per_batch` images (nine games each) search together. The last
    batch is padded with repeats of its first image, so that one compiled shape serves.

    Returns:
      (accuracy, honest wins bool [N, 9] with column j the j-th wrong label in order).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    lies = np.stack([np.delete(np.arange(10), label) for label in labels])  # [N, 9]
    batch_keys = jax.random.split(key, -(-len(images) // images_per_batch))
    wins = []
    for index, start in enumerate(range(0, len(images), images_per_batch)):
        chosen = np.arange(start, min(start + images_per_batch, len(images)))
        padded = np.concatenate([chosen, np.full(images_per_batch - len(chosen), chosen[0])])
        game_images = np.repeat(images[padded], 9, axis=0)
        honest = np.repeat(labels[padded], 9)
        _, won = play_games(model, variables, game_images, honest, lies[padded].reshape(-1), settings,
                            batch_keys[index])
        wins.append(won.reshape(images_per_batch, 9)[: len(chosen)])
    wins = np.concatenate(wins)
    return float(np.mean(np.all(wins, axis=1))), wins
