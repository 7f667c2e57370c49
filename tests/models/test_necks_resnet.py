"""FPN (shapes/strides on SpatialFormer and ResNet, a hand-built reference, extra levels) and the
torchvision ResNet wrapper (torchvision parity, frozen stages, norm_eval, strict checkpoints)."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

from sf3d.models.backbones.resnet import ResNet, load_resnet_checkpoint
from sf3d.models.backbones.spatialformer import SpatialFormer
from sf3d.models.necks.fpn import FPN
from sf3d.registry import MODELS

TINY = dict(dims=(16, 32, 64, 64), heads=(1, 2, 4, 4), depths=(1, 1, 1, 1))


@pytest.fixture(scope='module')
def resnet50():
    torch.manual_seed(0)
    return ResNet(depth=50, out_indices=(1, 2, 3))


def _check_pyramid(outs, strides, channels=256, hw=(64, 96)):
    assert len(outs) == len(strides)
    for out, s in zip(outs, strides):
        assert out.shape == (1, channels, -(-hw[0] // s), -(-hw[1] // s))


def test_fpn_on_spatialformer_tiny():
    torch.manual_seed(0)
    backbone = SpatialFormer(arch=TINY).eval()
    fpn, strides = FPN.from_backbone(backbone, out_channels=32, num_outs=5)
    assert strides == fpn.out_strides == [4, 8, 16, 32, 64]
    with torch.no_grad():
        outs = fpn(backbone(torch.randn(1, 3, 64, 96))['features'])
    _check_pyramid(outs, strides, channels=32)


def test_fpn_on_resnet50(resnet50):
    assert resnet50.out_channels == [512, 1024, 2048] and resnet50.out_strides == [8, 16, 32]
    fpn, strides = FPN.from_backbone(resnet50, num_outs=5, add_extra_convs='on_output', relu_before_extra_convs=True)
    assert strides == [8, 16, 32, 64, 128]
    with torch.no_grad():
        out = resnet50.eval()(torch.randn(1, 3, 64, 96))
        outs = fpn(out['features'])
    assert out['spatial_tokens'] is None
    _check_pyramid(outs, strides)
    fpn, strides = FPN.from_backbone(resnet50, out_channels=64, start_level=1)  # num_outs = used levels
    assert strides == [16, 32] and len(fpn(out['features'])) == 2


def test_fpn_matches_hand_built_reference():
    torch.manual_seed(0)
    fpn = FPN([3, 5], out_channels=4, num_outs=3)
    c4, c5 = torch.randn(2, 3, 6, 8), torch.randn(2, 5, 3, 4)
    lat = fpn.lateral_convs
    top = F.conv2d(c5, lat[1].weight, lat[1].bias)
    fine = F.conv2d(c4, lat[0].weight, lat[0].bias) + top.repeat_interleave(2, -2).repeat_interleave(2, -1)
    p4 = F.conv2d(fine, fpn.fpn_convs[0].weight, fpn.fpn_convs[0].bias, padding=1)
    p5 = F.conv2d(top, fpn.fpn_convs[1].weight, fpn.fpn_convs[1].bias, padding=1)
    outs = fpn([c4, c5])
    torch.testing.assert_close(outs[0], p4)
    torch.testing.assert_close(outs[1], p5)
    torch.testing.assert_close(outs[2], p5[..., ::2, ::2])  # max-pool, kernel 1, stride 2


def test_fpn_extra_convs_on_input():
    fpn = FPN([3, 5], out_channels=4, num_outs=4, add_extra_convs=True)
    assert fpn.add_extra_convs == 'on_input' and fpn.extra_convs[0].in_channels == 5
    outs = fpn([torch.randn(1, 3, 8, 8), torch.randn(1, 5, 4, 4)])
    assert [tuple(o.shape[-2:]) for o in outs] == [(8, 8), (4, 4), (2, 2), (1, 1)]


def test_registry_builds():
    fpn = MODELS.build(dict(type='FPN', in_channels=[8, 16], out_channels=8, num_outs=2))
    assert isinstance(fpn, FPN)
    assert isinstance(MODELS.build(dict(type='ResNet', depth=101, out_indices=(0, 1, 2, 3))), ResNet)


def test_fpn_bad_input():
    with pytest.raises(ValueError, match='add_extra_convs'):
        FPN([8, 16], 8, 3, add_extra_convs='on_top')
    with pytest.raises(ValueError, match='num_outs=1'):
        FPN([8, 16], 8, 1)
    with pytest.raises(ValueError, match='strides must double'):
        FPN([8, 16], 8, 2, in_strides=[8, 32])
    fpn = FPN([8, 16], 8, 2)
    with pytest.raises(ValueError, match=r'feature 1 must have shape \(B, 16, H, W\)'):
        fpn([torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)])
    with pytest.raises(ValueError, match='does not declare'):
        FPN.from_backbone(torch.nn.Linear(2, 2))


def test_resnet_matches_torchvision(resnet50):
    net = torchvision.models.resnet50(weights=None)
    net.load_state_dict({**resnet50.state_dict(), 'fc.weight': net.fc.weight, 'fc.bias': net.fc.bias})
    net.eval(), resnet50.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = resnet50(x)['features']
        y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        ref = []
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            y = layer(y)
            ref.append(y)
    for f, r in zip(feats, ref[1:]):
        torch.testing.assert_close(f, r)


def test_resnet_frozen_stages_and_norm_eval():
    model = ResNet(depth=50, frozen_stages=1, norm_eval=True).train()
    frozen = ['conv1.', 'bn1.', 'layer1.']
    for name, p in model.named_parameters():
        assert p.requires_grad == (not any(name.startswith(f) for f in frozen)), name
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.layer2.training and model.layer2[0].conv1.training
    before = model.layer3[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model.layer3[0].bn1.running_mean, before)  # statistics frozen

    model.norm_eval, model.frozen_stages = False, -1  # nothing frozen, BN trains
    model.train()
    assert all(m.training for m in bns)
    model.norm_eval, model.frozen_stages = False, 1
    model.train()
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training


def test_resnet_checkpoint_strict(tmp_path, resnet50):
    tv = torchvision.models.resnet50(weights=None).state_dict()  # torchvision keys, classifier included
    path = tmp_path / 'resnet50_tv.pth'
    torch.save(tv, path)
    model = ResNet(depth=50, pretrained=str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, tv[k]), k
    load_resnet_checkpoint(resnet50, {'state_dict': {f'backbone.{k}': v for k, v in tv.items()}})  # unwrapped
    assert torch.equal(resnet50.layer4[2].conv3.weight, tv['layer4.2.conv3.weight'])

    bad = {k: v for k, v in tv.items() if k != 'layer2.0.conv1.weight'}
    bad['layer9.weight'] = torch.zeros(1)
    expected = r"missing keys \['layer2.0.conv1.weight'\], unexpected keys \['layer9.weight'\]"
    with pytest.raises(KeyError, match=expected):
        load_resnet_checkpoint(resnet50, bad)
    with pytest.raises(ValueError, match='conv1.weight'):
        load_resnet_checkpoint(resnet50, dict(tv, **{'conv1.weight': torch.zeros(64, 3, 3, 3)}))
    with pytest.raises(FileNotFoundError, match='ResNet50_Weights'):
        ResNet(depth=50, pretrained=str(tmp_path / 'absent.pth'))


def test_resnet_bad_arguments():
    with pytest.raises(ValueError, match='depth'):
        ResNet(depth=34)
    with pytest.raises(ValueError, match='out_indices'):
        ResNet(out_indices=(1, 4))
    with pytest.raises(ValueError, match=r'images \(B, 3, H, W\)'):
        ResNet()(torch.randn(1, 1, 32, 32))
