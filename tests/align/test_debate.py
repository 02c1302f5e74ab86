"""Debate: the sparse view, random pixels, game scoring on a hand-made judge, and MNIST."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align import debate, training
from harness import data as data_lib

# Pixel (row, column) belongs to class column // 3, so classes own bands of three columns.
BANDS = np.eye(10, dtype=np.float32)[np.minimum(np.tile(np.arange(28), 28) // 3, 9)]


class BandJudge(nn.Module):
    """Hand-made judge: the logit of class c sums the revealed values in band c."""

    @nn.compact
    def __call__(self, x, *, train=False):
        values = x[..., 1].reshape(x.shape[0], -1)
        return values @ jnp.asarray(BANDS)


def band_image():
    """Nonzero pixels: bright in band 2 (the truth), dimmer in band 7 (the lie), bright in band 5."""
    image = np.zeros((28, 28, 1), np.uint8)
    image[10, 6] = 255  # band 2
    image[10, 21] = 128  # band 7
    image[12, 15] = 255  # band 5
    return image


def test_sparse_input_by_hand():
    images = jnp.arange(784, dtype=jnp.float32).reshape(1, 28, 28, 1) / 784
    mask = jnp.zeros((1, 784), bool).at[0, 30].set(True)
    view = debate.sparse_input(images, mask)
    assert view.shape == (1, 28, 28, 2)
    assert float(view[0, 1, 2, 0]) == 1.0  # pixel 30 is row 1, column 2
    assert float(view[0, 1, 2, 1]) == pytest.approx(30 / 784)
    assert float(view[..., 0].sum()) == 1.0
    assert float(view[..., 1].sum()) == pytest.approx(30 / 784)


def test_random_mask_reveals_k_nonzero_pixels():
    images = jnp.asarray(np.stack([band_image()] * 4 + [np.full((28, 28, 1), 9, np.uint8)]), jnp.float32)
    mask = debate.random_mask(jax.random.key(0), images, 2)
    assert mask.sum(axis=1).tolist() == [2] * 5
    nonzero = np.asarray(images.reshape(5, 784) > 0)
    assert np.all(nonzero[np.asarray(mask)])


def test_random_mask_falls_back_to_zero_pixels():
    images = jnp.asarray(band_image()[None], jnp.float32)
    mask = debate.random_mask(jax.random.key(1), images, 5)
    assert int(mask.sum()) == 5
    assert np.all(np.asarray(mask)[0, [10 * 28 + 6, 10 * 28 + 21, 12 * 28 + 15]])


@pytest.mark.parametrize("pixels", [0, 785, 2.5])
def test_check_pixels_rejects_out_of_range(pixels):
    with pytest.raises(ValueError, match=f"pixels={pixels!r} is outside the valid range 1 to 784"):
        debate.check_pixels(pixels)


def test_unknown_judge_is_rejected():
    with pytest.raises(ValueError, match="unknown judge 'vit'"):
        debate.build_judge("vit")


@pytest.mark.parametrize(
    "pixels, honest_first, honest_wins",
    [
        (1, False, False),  # the liar reveals band 7 and the judge receives nothing else
        (2, False, True),  # the liar's 0.5 in band 7 loses to the honest 1.0 in band 2
        (3, True, True),
    ],
)
def test_game_on_hand_made_judge(pixels, honest_first, honest_wins):
    settings = debate.GameSettings(pixels=pixels, simulations=8, honest_first=honest_first)
    mask, wins = debate.play_games(BandJudge(), {}, band_image()[None], [2], [7], settings, jax.random.key(2))
    assert wins.tolist() == [honest_wins]
    assert int(mask.sum()) == pixels
    assert np.all(band_image().reshape(1, 784)[mask] > 0)


def test_play_games_rejects_equal_labels():
    settings = debate.GameSettings(pixels=1, simulations=2)
    with pytest.raises(ValueError, match="labels must differ"):
        debate.play_games(BandJudge(), {}, band_image()[None], [3], [3], settings, jax.random.key(0))


def test_game_settings_reject_zero_simulations():
    with pytest.raises(ValueError, match="simulations=0 must be at least 1"):
        debate.GameSettings(pixels=4, simulations=0)


@pytest.fixture(scope="module")
def mnist_judge(data_dir):
    train = data_lib.load_image_dataset("mnist", "train", data_dir=data_dir).take(8192)
    test = data_lib.load_image_dataset("mnist", "test", data_dir=data_dir).take(500)
    model = debate.build_judge("mlp")
    options = training.TrainOptions(steps=600, batch_size=128, checkpoint_every=300)
    variables = debate.train_judge(train.images, train.labels, pixels=6, options=options, model=model)
    return model, variables, test


def test_judge_learns_from_six_random_pixels(mnist_judge):
    model, variables, test = mnist_judge
    accuracy = debate.random_pixel_accuracy(model, variables, test.images, test.labels, pixels=6,
                                            key=jax.random.key(3))
    assert accuracy > 0.3  # chance is 0.1


def test_debate_beats_random_pixels_on_mnist(mnist_judge):
    model, variables, test = mnist_judge
    images, labels = test.images[:32], test.labels[:32]
    random_acc = debate.random_pixel_accuracy(model, variables, images, labels, pixels=6, key=jax.random.key(4))
    settings = debate.GameSettings(pixels=6, simulations=2)
    debate_acc, wins = debate.debate_accuracy(model, variables, images, labels, settings, jax.random.key(5))
    assert wins.shape == (32, 9)
    assert debate_acc == np.mean(np.all(wins, axis=1))
    assert debate_acc > random_acc
