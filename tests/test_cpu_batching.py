"""CPU forward passes are cut so the largest layer output stays within CPU_ACTIVATION_BYTES (inference/features.py;
why: docs/benchmarks/cpu_batching.md). References: the chunk size worked out by hand from the layer shapes, a
count of the forward calls, and each image embedded alone in a plain loop."""

import torch
import torch.nn as nn

from reidkit.inference.features import CPU_ACTIVATION_BYTES, cpu_images_per_forward, embed_tensor

HEIGHT, WIDTH = 256, 128


def conv_model() -> nn.Module:
    # largest output: the 16-channel conv (and its ReLU) at full size, 16 x 256 x 128 float32 = 2 MiB per image
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class CountingForward(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.batch_sizes = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.inner(x)


def test_images_per_forward_is_the_activation_budget_over_the_largest_layer_output():
    per_image = 16 * HEIGHT * WIDTH * 4
    assert per_image == 2 * 2**20
    model = conv_model().eval()
    chunk = cpu_images_per_forward(model, (HEIGHT, WIDTH), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    assert chunk == CPU_ACTIVATION_BYTES // per_image == 8


def test_a_large_cpu_batch_runs_in_chunks_and_gives_each_image_its_own_embedding():
    model = CountingForward(conv_model())
    images = torch.randint(0, 256, (20, 3, HEIGHT, WIDTH), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    features = embed_tensor(model, images, mean=mean, std=std, device=torch.device("cpu"), batch_size=128)
    assert model.batch_sizes == [1, 8, 8, 3]  # the first image alone (measured, kept), then 19 in chunks of 8

    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        alone = [model.inner((img[None].float() / 255 - m) / s)[0] for img in images]
    expected = torch.nn.functional.normalize(torch.stack(alone), dim=1)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-4)


def test_a_small_batch_size_is_kept():
    model = CountingForward(conv_model())
    images = torch.zeros(5, 3, HEIGHT, WIDTH, dtype=torch.uint8)
    embed_tensor(model, images, mean=(0, 0, 0), std=(1, 1, 1), device=torch.device("cpu"), batch_size=2)
    assert model.batch_sizes == [1, 2, 2]  # the measured first image, then batches of 2
    embed_tensor(model, images, mean=(0, 0, 0), std=(1, 1, 1), device=torch.device("cpu"), batch_size=2)
    assert model.batch_sizes[3:] == [1, 2, 2]  # the same chunks on every call: results do not depend on history
