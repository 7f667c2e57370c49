"""SpatialFormer backbone: shapes, gradients, cost scaling, checkpoints, options, bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sf3d.models import SpatialFormer
from sf3d.models.backbones.spatialformer import checkpoint_filter_fn, load_pretrained
from sf3d.models.layers import Attention, grid_sincos_encoding, sincos_2d
from sf3d.registry import MODELS
from sf3d.utils.flops import count_params_flops

TINY = dict(dims=(16, 32, 64, 64), heads=(1, 2, 4, 4), depths=(1, 1, 1, 1))
TINY2 = dict(dims=(16, 32, 64, 64), heads=(1, 2, 4, 4), depths=(2, 2, 2, 2))


def tiny(**kwargs) -> SpatialFormer:
    torch.manual_seed(kwargs.pop('seed', 0))
    return SpatialFormer(arch=kwargs.pop('arch', TINY), **kwargs)


def outputs(model, images, **kwargs):
    out = model(images, **kwargs)
    return [*out['features'], out['spatial_tokens']]


@pytest.mark.parametrize('arch', ['t', 's', 'b'])
def test_size_variants_shapes(arch):
    model = SpatialFormer(arch=arch).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 64))
    assert model.out_strides == [4, 8, 16, 32]
    assert model.out_channels == list(SpatialFormer.arch_zoo[arch]['dims'])
    for feat, c, s in zip(out['features'], model.out_channels, model.out_strides):
        assert feat.shape == (1, c, 32 // s, 64 // s)
    assert out['spatial_tokens'].shape == (1, 64, model.embed_dims[-1])


@pytest.mark.parametrize('size', [(64, 64), (64, 96), (96, 160)])
def test_tiny_shapes_and_spatial_token_count(size):
    model = tiny(out_indices=(1, 3), spatial_grid=(4, 6)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert model.out_channels == [32, 64] and model.out_strides == [8, 32]
    assert [f.shape for f in out['features']] == [(2, 32, size[0] // 8, size[1] // 8),
                                                  (2, 64, size[0] // 32, size[1] // 32)]
    assert out['spatial_tokens'].shape == (2, 24, 64)  # independent of the image size
    assert model.num_spatial_tokens == 24 and model.spatial_grid == (4, 6) and model.embed_dims == TINY['dims']


def test_every_parameter_gets_a_gradient():
    model = tiny(arch=TINY2, drop_path_rate=0.)
    loss = sum(o.mean() for o in outputs(model, torch.randn(2, 3, 64, 64)))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def test_registry_build_and_arch_errors():
    model = MODELS.build(dict(type='SpatialFormer', arch=TINY, spatial_grid=(2, 3)))
    assert isinstance(model, SpatialFormer) and model.num_spatial_tokens == 6
    with pytest.raises(ValueError, match=r"unknown arch 'x'.*\['b', 's', 't'\]"):
        SpatialFormer(arch='x')
    with pytest.raises(ValueError, match='missing'):
        SpatialFormer(arch=dict(dims=(16, 32, 64, 64)))
    with pytest.raises(ValueError, match='image_pos'):
        tiny(image_pos=('rope',))


def _stage_flops(model, size):
    counted = count_params_flops(model, torch.randn(1, 3, *size))['by_module']
    return [counted[f'stages.{i}'] for i in range(4)]


def test_bca_cost_linear_in_image_tokens_and_self_attention_superlinear():
    model = tiny(arch=TINY2).eval()
    sizes = [(64, 64), (128, 128), (256, 256)]  # image tokens x1, x4, x16
    f = [_stage_flops(model, s) for s in sizes]
    bca = [fi[0] + fi[1] for fi in f]
    # cost = a + b * N (a: the spatial-token terms) -> increments grow exactly 4x per 4x tokens
    assert (bca[2] - bca[1]) / (bca[1] - bca[0]) == pytest.approx(4.0, rel=0.01)
    assert bca[2] / bca[1] == pytest.approx(4.0, rel=0.1)
    sa = [fi[2] for fi in f]
    assert (sa[2] - sa[1]) / (sa[1] - sa[0]) > 5.0  # quadratic attention term


def test_count_params_flops_matches_hand_count():
    layer = torch.nn.Linear(8, 5)
    counted = count_params_flops(torch.nn.Sequential(layer), torch.randn(3, 8))
    assert counted['params'] == 8 * 5 + 5
    assert counted['flops'] == 2 * 3 * 8 * 5 == counted['by_module']['0']
    attn = Attention(8, 2)
    counted = count_params_flops(attn, (torch.randn(1, 4, 8), torch.randn(1, 6, 8)))
    projections = 2 * (4 * 8 * 8 + 2 * 6 * 8 * 8 + 4 * 8 * 8)
    assert counted['flops'] == projections + 2 * 2 * 2 * (4 * 6 * 4)  # + QK^T and AV, 2 heads of 4 channels


def test_attention_matches_reference():
    torch.manual_seed(0)
    attn = Attention(12, 3).eval()
    q_in, kv_in = torch.randn(2, 5, 12), torch.randn(2, 7, 12)
    out = attn(q_in, key=kv_in + 1, value=kv_in)

    def heads(x):
        return x.view(2, -1, 3, 4).transpose(1, 2)

    q, k, v = heads(attn.q(q_in)), heads(attn.k(kv_in + 1)), heads(attn.v(kv_in))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(out, expected)


def test_sincos_encoding_reference_and_grid_invariance():
    dim = 8
    code = grid_sincos_encoding(2, 3, dim)
    omega = 2 * np.pi * 0.5 * (64 / 0.5) ** (np.arange(2) / 1)
    y, x = (1 + 0.5) / 2, (0 + 0.5) / 3  # row 1, column 0 -> flat index 3
    ref = np.concatenate([np.sin(y * omega), np.cos(y * omega), np.sin(x * omega), np.cos(x * omega)])
    np.testing.assert_allclose(code[3].numpy(), ref, rtol=1e-6, atol=1e-6)
    # the same normalised position gets the same code on any grid: centre of 1x1 == centre of 3x5
    torch.testing.assert_close(grid_sincos_encoding(1, 1, dim)[0], grid_sincos_encoding(3, 5, dim)[7])
    model = tiny(spatial_grid=(3, 5))
    torch.testing.assert_close(model.spatial_pos[0], grid_sincos_encoding(3, 5, 16))
    with pytest.raises(ValueError, match='multiple of 4'):
        sincos_2d(torch.zeros(1, 2), 6)


def test_state_dict_round_trip(tmp_path):
    model = tiny().eval()
    path = tmp_path / 'sf.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(epoch=1)), path)
    fresh = tiny(seed=1).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = outputs(fresh, images)
        load_pretrained(fresh, path)
        after, ref = outputs(fresh, images), outputs(model, images)
    assert not torch.equal(before[-1], ref[-1])
    for a, b in zip(after, ref):
        assert torch.equal(a, b)


def test_init_cfg_pretrained_and_missing_file(tmp_path):
    model = tiny()
    path = tmp_path / 'cls.pth'
    # an mmengine classifier checkpoint: backbone./head. keys under 'state_dict'
    state = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(10, 64)
    torch.save(dict(state_dict=state, meta={}), path)
    loaded = tiny(seed=3, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    loaded.init_weights()
    torch.testing.assert_close(loaded.spatial_embed, model.spatial_embed)
    missing = tmp_path / 'nope.pth'
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        tiny(init_cfg=dict(type='Pretrained', checkpoint=str(missing))).init_weights()


def test_strict_key_check_names_keys():
    model = tiny()
    state = dict(model.state_dict())
    state['stages.0.extra.weight'] = torch.zeros(1)
    with pytest.raises(KeyError, match='stages.0.extra.weight'):
        load_pretrained(tiny(), state)
    state = dict(model.state_dict())
    del state['spatial_norm.bias']
    with pytest.raises(KeyError, match='spatial_norm.bias'):
        load_pretrained(tiny(), state)
    with pytest.raises(KeyError, match='head.fc.weight'):  # kept when drop_head=False
        load_pretrained(tiny(), {'head.fc.weight': torch.zeros(1), **model.state_dict()}, drop_head=False)


def test_spatial_grid_resize_on_load():
    source = tiny()
    target = tiny(seed=1, spatial_grid=(10, 15))
    load_pretrained(target, source.state_dict())
    grid = source.spatial_embed.detach().reshape(1, 8, 8, 16).permute(0, 3, 1, 2)  # (1, C, 8, 8)
    expected = F.interpolate(grid, size=(10, 15), mode='bicubic', align_corners=False)
    torch.testing.assert_close(target.spatial_embed.detach(), expected.flatten(2).transpose(1, 2))
    torch.testing.assert_close(target.stages[2].blocks[0].attn.q.weight, source.stages[2].blocks[0].attn.q.weight)
    filtered = checkpoint_filter_fn(source.state_dict(), target)
    assert filtered['spatial_embed'].shape == (1, 150, 16)
    with torch.no_grad():
        assert target(torch.randn(1, 3, 64, 64))['spatial_tokens'].shape == (1, 150, 64)


@pytest.mark.parametrize('shape,match', [
    ((3, 64, 64), r'\(3, 64, 64\)'),
    ((1, 4, 64, 64), r'\(1, 4, 64, 64\)'),
    ((1, 3, 64, 80), r'64x80.*pad the image to a multiple of 32.*64x96'),
])
def test_bad_inputs_raise(shape, match):
    with pytest.raises(ValueError, match=match):
        tiny()(torch.randn(*shape))


def test_stage3_spatial_reduction():
    base = tiny().eval()
    reduced = tiny(stage3_sr_ratio=2).eval()
    missing, unexpected = reduced.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all('.sr.' in k and k.startswith('stages.2.') for k in missing)
    images = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        a, b = outputs(base, images), outputs(reduced, images)
    assert [t.shape for t in a] == [t.shape for t in b]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # stages 1-2 untouched
    assert not torch.allclose(a[2], b[2]) and not torch.allclose(a[4], b[4])
    with pytest.raises(ValueError, match='multiple of 64'):
        tiny(stage3_sr_ratio=4)(torch.randn(1, 3, 96, 64))


def test_gradient_checkpointing_matches():
    images = torch.randn(2, 3, 64, 64)
    results = []
    for with_cp in (False, True):
        model = tiny(arch=TINY2, drop_path_rate=0.2, with_cp=with_cp).train()
        torch.manual_seed(7)
        outs = outputs(model, images)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    (out_a, grad_a), (out_b, grad_b) = results
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a, b)
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], msg=name)


def test_external_spatial_tokens():
    model = tiny().eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        default = outputs(model, images)
        same = outputs(model, images, spatial_tokens=model.initial_spatial_tokens(2).clone())
        other = outputs(model, images, spatial_tokens=torch.randn(2, 64, 16))
    for a, b in zip(default, same):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(default[0], other[0]) and not torch.allclose(default[-1], other[-1])
    with pytest.raises(ValueError, match=r'\(2, 64, 16\).*\(2, 64, 32\)'):
        model(images, spatial_tokens=torch.randn(2, 64, 32))


@pytest.mark.parametrize('image_pos', [('peg', 'sine'), ('sine',), ('peg',), ()])
def test_image_pos_variants(image_pos):
    model = tiny(image_pos=image_pos).eval()
    has_peg = any('peg' in k for k in model.state_dict())
    assert has_peg == ('peg' in image_pos)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out['features'][0].shape == (1, 16, 16, 24)
    assert all(torch.isfinite(t).all() for t in [*out['features'], out['spatial_tokens']])


def test_sine_position_changes_image_token_attention():
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        with_sine = outputs(tiny(image_pos=('sine',)).eval(), images)
        without = outputs(tiny(image_pos=()).eval(), images)
    assert not torch.allclose(with_sine[0], without[0])
