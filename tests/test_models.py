import pytest
import torch

from splitfedzip.models import UNet, build_split_unet, split_unet


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("classes, back_end", [(5, 73_157), (2, 73_058)])
def test_paper_parameter_counts(classes, back_end):
    unet = UNet(3, classes, base_width=32)
    parts = split_unet(unet)
    assert count(parts.front_end) == 28_768
    assert count(parts.server) == 7_661_248
    assert count(parts.back_end) == back_end
    assert count(parts.front_end) + count(parts.server) + count(parts.back_end) == count(unet)
    if classes == 5:
        assert count(unet) == 7_763_173


def test_split_shapes_at_paper_resolution():
    parts = build_split_unet(5, 32, seed=0)
    with torch.no_grad():
        s1, skip = parts.front_end(torch.zeros(1, 3, 256, 256))
        s2 = parts.server(s1)
    assert tuple(s1.shape) == (1, 64, 128, 128)
    assert tuple(s2.shape) == (1, 64, 128, 128)
    assert tuple(skip.shape) == (1, 32, 256, 256)


@pytest.mark.parametrize("train", [False, True])
def test_split_equals_unsplit(train):
    unet = UNet(3, 5, base_width=4).train(train)
    parts = split_unet(unet)
    x = torch.randn(2, 3, 64, 64)
    s1, skip = parts.front_end(x)
    split_out = parts.back_end(parts.server(s1), skip)
    torch.testing.assert_close(split_out, unet(x), rtol=0, atol=0)


def test_same_seed_same_weights():
    a, b = build_split_unet(2, 4, seed=3), build_split_unet(2, 4, seed=3)
    for p, q in zip(a.server.parameters(), b.server.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("classes", [2, 5])
def test_foreground_prior_sets_the_head_start(classes):
    net = build_split_unet(classes, 4, seed=3, foreground_prior=0.1)
    plain = build_split_unet(classes, 4, seed=3)
    # Only the head's bias departs from the default initialisation.
    ours, theirs = net.back_end.state_dict(), plain.back_end.state_dict()
    for (name, a), b in zip(ours.items(), theirs.values(), strict=True):
        assert torch.equal(a, b) or name == "head.bias"
    # With the weights zeroed the head's output is its bias: background 0.9, the rest shared.
    with torch.no_grad():
        net.back_end.head.weight.zero_()
        probs = net(torch.rand(2, 3, 32, 32)).softmax(1).mean((0, 2, 3))
    expected = torch.tensor([0.9] + [0.1 / (classes - 1)] * (classes - 1))
    assert torch.allclose(probs, expected, atol=1e-6)
