"""Dense pretraining (DensePretrainer) and its transfer (MultiViewDetector(pretrained=...)): the
pretrainer's losses are the detector's token and pixel losses of the same weights, only the dense
parts learn, and a detector of either query mode loads exactly those parts, with clear errors."""
import pytest
import torch
from detector_utils import ARCH, EMBED, batched_cameras, build, samples_for, single_thread_fixture
from test_fixed_assignment import assign_batch

from sf3d.models.detectors import DensePretrainer
from sf3d.models.detectors.multiview_detector import DENSE_PARTS, load_dense_parts

one_thread = single_thread_fixture()
DENSE = dict(token_loss=dict(assign=True), pixel_loss=dict(), depth_bins=2)


def pretrainer(seed=1, **kwargs):
    torch.manual_seed(seed)
    head = dict(num_layers=2, num_heads=2, ffn_dims=64, num_cams=3, dropout=0.0)
    return DensePretrainer(backbone=dict(type='SpatialFormer', arch=ARCH, spatial_grid=(2, 3), drop_path_rate=0.0),
                           neck=dict(), embed_dims=EMBED, head=head, **dict(DENSE, **kwargs))


def batch():
    rigs, _, boxes, labels, _, inputs = assign_batch()
    return inputs, samples_for(batched_cameras(*rigs), boxes, labels)


@pytest.mark.parametrize('offsets', [False, True])
def test_pretrainer_losses_are_the_detectors_dense_losses(offsets):
    inputs, samples = batch()
    pre = pretrainer(token_offsets=offsets).train()
    det = build(3, token_offsets=offsets, **DENSE).train()
    det.load_state_dict(pre.state_dict())
    losses = pre(inputs, samples, mode='loss')
    assert set(losses) == {'token.loss_cls', 'token.loss_depth', 'pixel.loss_cls', 'pixel.loss_depth'} | (
        {'token.loss_offset'} if offsets else set())
    expected = det(inputs, samples, mode='loss')
    for key, value in losses.items():
        assert value > 0
        torch.testing.assert_close(value, expected[key])


def test_only_the_dense_parts_learn():
    inputs, samples = batch()
    pre = pretrainer().train()
    sum(pre(inputs, samples, mode='loss').values()).backward()
    for part in ('backbone', 'neck', 'conditioning', 'depth_mlp', 'token_cls', 'pixel_head'):
        grads = [p.grad for p in getattr(pre, part).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    for part in ('head', 'query_proj', 'query_pos_mlp'):
        assert all(p.grad is None for p in getattr(pre, part).parameters()), part


@pytest.mark.parametrize('mode', ['spatial_tokens', 'offsets', 'learned'])
def test_detector_loads_exactly_the_dense_parts(tmp_path, mode):
    offsets = dict(token_offsets=mode == 'offsets')
    pre = pretrainer(seed=1, **offsets)
    path = tmp_path / 'dense.pth'
    torch.save(dict(state_dict={f'module.{k}': v for k, v in pre.state_dict().items()}, meta={}), path)
    extra = dict(conditioning='none', pixel_loss=dict()) if mode == 'learned' else dict(DENSE, **offsets)
    mode = 'spatial_tokens' if mode == 'offsets' else mode
    plain = build(3, query_mode=mode, seed=2, **extra)
    torch.manual_seed(5)
    plain.init_weights()  # mmengine's initialisation re-draws some weights (the head's)
    before = plain.state_dict()
    det = build(3, query_mode=mode, seed=2, pretrained=str(path), **extra)
    torch.manual_seed(5)
    det.init_weights()
    after, source = det.state_dict(), pre.state_dict()
    loaded = {k for k in after if k.split('.')[0] in DENSE_PARTS}
    expected = {'backbone', 'neck', 'pixel_head'}
    if mode == 'spatial_tokens':
        expected |= {'conditioning', 'depth_mlp', 'token_cls'} | ({'offset_mlp'} if offsets['token_offsets'] else set())
    assert {k.split('.')[0] for k in loaded} == expected
    for key, value in after.items():
        if key in loaded:
            torch.testing.assert_close(value, source[key], rtol=0, atol=0)
        else:  # decoder and queries keep their own initialisation
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert not torch.equal(after['backbone.stages.0.downsample.weight'], before['backbone.stages.0.downsample.weight'])


def test_loading_errors(tmp_path):
    det = build(3, **DENSE)
    with pytest.raises(FileNotFoundError, match='missing.pth.*nuscenes_tiny_dense.py'):
        load_dense_parts(det, str(tmp_path / 'missing.pth'))
    state = pretrainer().state_dict()
    no_pixel = {k: v for k, v in state.items() if not k.startswith('pixel_head.')}
    with pytest.raises(KeyError, match="no 'pixel_head' weights"):
        load_dense_parts(det, no_pixel)
    with pytest.raises(ValueError, match=r'depth_mlp.*2\.weight: checkpoint \(2, 32\) vs model \(3, 32\)'):  # 3 bins
        load_dense_parts(build(3, **dict(DENSE, depth_bins=3)), state)
    with pytest.raises(KeyError, match='missing keys'):
        load_dense_parts(det, {k: v for k, v in state.items() if k != 'backbone.spatial_embed'})


def test_pretrainer_rejects_what_it_cannot_train():
    with pytest.raises(ValueError, match="query_mode='spatial_tokens' and token_loss"):
        pretrainer(token_loss=None)
    with pytest.raises(ValueError, match="query_mode='spatial_tokens' and token_loss"):
        pretrainer(query_mode='learned', conditioning='none', depth_bins=1)
    inputs, samples = batch()
    with pytest.raises(ValueError, match="mode must be 'loss' or 'tensor'"):
        pretrainer()(inputs, samples, mode='predict')
    with pytest.raises(ValueError, match=r"DensePretrainer: inputs\['img'\] must be \(B, N_cam, 3, H, W\)"):
        pretrainer()(dict(img=inputs['img'][0]), samples)
    with pytest.raises(KeyError, match='DensePretrainer: inputs must be dict'):
        pretrainer()(inputs['img'], samples)
