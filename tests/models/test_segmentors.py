"""EncoderDecoder2D and UPerHead / FCNHead: shapes, losses against numpy, ignore handling,
pretrained backbone loading, undoing padding / resize, slide and multi-scale + flip testing,
short overfits of both decode heads, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapper

from sf3d.models.heads.uper_head import FCNHead, UPerHead, seg_cross_entropy
from sf3d.models.segmentors import EncoderDecoder2D
from sf3d.registry import MODELS

BACKBONE = dict(type='SpatialFormer', arch=dict(dims=(16, 32, 64, 64), heads=(1, 2, 4, 4), depths=(1, 1, 1, 1)),
                spatial_grid=(4, 4), drop_path_rate=0.0)
UPER = dict(type='UPerHead', num_classes=3, channels=16)
MASK = dict(type='MaskTransformerHead', num_classes=3, embed_dims=32, mask_dims=32, num_heads=2, ffn_dims=64,
            num_layers=3, num_queries=20, num_candidates=64)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(decode_head=UPER, seed=0, **kwargs):
    torch.manual_seed(seed)
    return EncoderDecoder2D(backbone=kwargs.pop('backbone', BACKBONE), decode_head=decode_head, **kwargs)


def scene():
    """A 64 x 64 image with three regions (background 0, rectangle 1, disc 2) and its labels."""
    gt = torch.zeros(64, 64, dtype=torch.long)
    gt[8:30, 10:40] = 1
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing='ij')
    gt[(yy - 44) ** 2 + (xx - 40) ** 2 < 14 ** 2] = 2
    colours = torch.tensor([[-1.0, -0.5, 0.2], [1.0, 0.3, -0.8], [0.0, 1.2, 0.9]])
    noise = 0.3 * torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
    return colours[gt].permute(2, 0, 1) + noise, gt


def meta(ori_shapes, img_shapes):
    return dict(img_path=[f'img{i}.jpg' for i in range(len(ori_shapes))], ori_shape=list(ori_shapes),
                img_shape=list(img_shapes))


# ---------------------------------------------------------------------------------------------- losses
def test_seg_cross_entropy_matches_numpy_and_ignores_255():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 5, generator=g, requires_grad=True)
    gt = torch.randint(0, 4, (2, 6, 5), generator=g)
    gt[0, :2] = 255
    gt[1, :, 3:] = 255
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    loss = seg_cross_entropy(logits, gt, class_weight=weight)
    loss.backward()

    lg = logits.detach().double().numpy()
    logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))  # (B, K, H, W)
    b, y, x = np.nonzero(gt.numpy() != 255)
    labels = gt.numpy()[b, y, x]
    nll = -logp[b, labels, y, x]
    w = weight.numpy()[labels]
    np.testing.assert_allclose(loss.item(), (w * nll).sum() / w.sum(), rtol=1e-5)
    ignored = (gt == 255).unsqueeze(1).expand_as(logits)
    assert logits.grad[ignored].abs().max() == 0 and logits.grad[~ignored].abs().sum() > 0
    # all ignored: zero with a graph, not NaN
    zero = seg_cross_entropy(logits, torch.full_like(gt, 255))
    assert zero.item() == 0 and zero.requires_grad


def test_uper_head_shapes_and_losses():
    torch.manual_seed(0)
    head = UPerHead(in_channels=[8, 16, 24, 32], num_classes=5, channels=16)
    aux = FCNHead(in_channels=24, in_index=2, num_classes=5, channels=8)
    feats = [torch.randn(2, c, 48 // s, 64 // s) for c, s in zip([8, 16, 24, 32], [4, 8, 16, 32])]
    assert head(feats).shape == (2, 5, 12, 16) and aux(feats).shape == (2, 5, 3, 4)
    gt = torch.randint(0, 5, (2, 48, 64))
    head.eval()
    aux.eval()
    scores = head.predict_scores(feats, None, (48, 64))
    assert scores.shape == (2, 5, 48, 64)
    torch.testing.assert_close(scores.sum(1), torch.ones(2, 48, 64))
    losses = aux.loss(feats, None, gt)
    logits = F.interpolate(aux(feats), size=(48, 64), mode='bilinear', align_corners=False)
    torch.testing.assert_close(losses['loss_ce'], 0.4 * F.cross_entropy(logits, gt))  # default weight 0.4
    acc = (logits.argmax(1) == gt).float().mean() * 100
    torch.testing.assert_close(losses['acc_seg'], acc)


def test_encoder_decoder_uper_losses_predict_and_tensor_shapes():
    model = build(auxiliary_head=dict(type='FCNHead', num_classes=3, channels=8))
    x = torch.randn(2, 3, 64, 96)
    gt = torch.randint(0, 3, (2, 64, 96))
    gt[:, 40:] = 255  # padding
    losses = model(x, dict(gt_seg_map=list(gt)), mode='loss')
    assert set(losses) == {'decode.loss_ce', 'decode.acc_seg', 'aux.loss_ce', 'aux.acc_seg'}
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert model.backbone.stages[0].downsample.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3, 64, 96)
        preds = model(x, meta([(50, 70), (128, 192)], [(40, 56), (64, 96)]), mode='predict')
    assert [p['img_path'] for p in preds] == ['img0.jpg', 'img1.jpg']
    assert preds[0]['pred_sem_seg'].shape == (50, 70) and preds[1]['pred_sem_seg'].shape == (128, 192)
    assert all(p['pred_sem_seg'].dtype == torch.int64 for p in preds)


def test_registered_and_runs_mmengine_train_and_val_steps():
    torch.manual_seed(0)
    model = MODELS.build(dict(type='EncoderDecoder2D', backbone=BACKBONE, decode_head=MASK))
    assert isinstance(model, EncoderDecoder2D)
    img, gt = scene()
    data = dict(inputs=img[None].repeat(2, 1, 1, 1), data_samples=dict(gt_seg_map=[gt, gt], **meta([(64, 64)] * 2,
                                                                                                     [(64, 64)] * 2)))
    log_vars = model.train_step(data, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01)))
    assert torch.isfinite(log_vars['loss']) and 'decode.d0.loss_cls' in log_vars
    preds = model.val_step(data)
    assert len(preds) == 2 and preds[0]['pred_sem_seg'].shape == (64, 64)


@pytest.mark.parametrize('head', [UPER, MASK], ids=['uper', 'mask_transformer'])
def test_pretrained_backbone_loads(tmp_path, head):
    torch.manual_seed(7)
    source = MODELS.build(BACKBONE)
    path = tmp_path / 'imagenet.pth'
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}  # an ImageNet classifier checkpoint
    state['head.fc.weight'] = torch.zeros(10, 64)
    torch.save(dict(state_dict=state, meta={}), path)
    model = build(head, backbone=dict(BACKBONE, init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    assert not torch.equal(model.backbone.spatial_embed, source.spatial_embed)
    model.init_weights()
    for k, v in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k


# ---------------------------------------------------------------------------------------------- inference
def one_hot_of_channel0(num_classes):
    """A stand-in for ``encode_decode``: one-hot scores of the (rounded) first input channel."""
    return lambda x: F.one_hot(x[:, 0].round().long(), num_classes).permute(0, 3, 1, 2).float()


def test_predict_undoes_padding_and_resize():
    model = build(dict(UPER, num_classes=4)).eval()
    model.encode_decode = one_hot_of_channel0(4)
    ori_shapes, labels, batch = [(48, 40), (24, 64)], [], torch.full((2, 3, 32, 32), 3.0)  # label 3: padding only
    for b, (H0, W0) in enumerate(ori_shapes):
        yy, xx = np.meshgrid(np.arange(H0), np.arange(W0), indexing='ij')
        lab = (yy // 12 + xx // 10 + b) % 3  # blocks of 12 x 10 file pixels
        labels.append(lab)
        small = lab[::2, ::2]  # the test pipeline's 0.5 resize (scale_factor 0.5)
        batch[b, 0, :small.shape[0], :small.shape[1]] = torch.from_numpy(small).float()
    data = meta(ori_shapes, [(24, 20), (12, 32)])
    data['scale_factor'] = [(0.5, 0.5)] * 2
    preds = model(batch, data, mode='predict')
    for p, lab in zip(preds, labels):
        assert p['pred_sem_seg'].shape == lab.shape
        np.testing.assert_array_equal(p['pred_sem_seg'].numpy(), lab)  # no padding label, blocks in place


def test_slide_inference_averages_windows():
    model = build(test_cfg=dict(mode='slide', crop_size=32, stride=(16, 16))).eval()
    windows = []

    def fake(x):
        windows.append(tuple(x.shape[-2:]))
        return torch.full((x.shape[0], 3, *x.shape[-2:]), float(len(windows)))

    model.encode_decode = fake
    scores = model.inference(torch.zeros(1, 3, 64, 64))
    assert windows == [(32, 32)] * 9
    expected = np.zeros((64, 64))
    count = np.zeros((64, 64))
    for n, (y, x) in enumerate((y, x) for y in (0, 16, 32) for x in (0, 16, 32)):
        expected[y:y + 32, x:x + 32] += n + 1
        count[y:y + 32, x:x + 32] += 1
    np.testing.assert_allclose(scores[0, 0].numpy(), expected / count)

    real = build().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        whole = real.inference(x)
        real.test_cfg = real._check_test_cfg(dict(mode='slide', crop_size=(64, 64), stride=(32, 32)))
        torch.testing.assert_close(real.inference(x), whole)


@pytest.mark.parametrize('head', [UPER, MASK], ids=['uper', 'mask_transformer'])
def test_multi_scale_flip_equals_mean_of_single_passes(head):
    scales = (0.5, 1.0, 1.5)
    model = build(head, test_cfg=dict(aug=dict(scales=scales, flip=True))).eval()
    ori, (h, w) = (50, 70), (40, 56)
    x = F.pad(torch.randn(1, 3, h, w), (0, 64 - w, 0, 64 - h))
    with torch.no_grad():
        aug = model.predict_scores(x, meta([ori], [(h, w)]))[0]
        model.test_cfg['aug'] = None
        passes = []
        for s in scales:
            size = (int(h * s + 0.5), int(w * s + 0.5))
            img = F.interpolate(x[..., :h, :w], size=size, mode='bilinear', align_corners=False)
            for flip in (False, True):
                im = img.flip(-1) if flip else img
                pad = (0, -size[1] % 32, 0, -size[0] % 32)
                single = model.predict_scores(F.pad(im, pad), meta([ori], [size]))[0]  # (K, 50, 70)
                passes.append(single.flip(-1) if flip else single)
    assert aug.shape == (3, 50, 70) and len(passes) == 6
    torch.testing.assert_close(aug, torch.stack(passes).mean(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(aug, passes[2], atol=1e-3)  # the augmentation does change the scores


# ---------------------------------------------------------------------------------------------- overfit
@pytest.mark.parametrize('head,steps', [(dict(UPER, channels=32), 40), (MASK, 30),
                                        (dict(MASK, query_mode='learned'), 30)],
                         ids=['uper', 'mask_transformer_tokens', 'mask_transformer_learned'])
def test_short_overfit_reaches_pixel_accuracy(head, steps):
    model = build(head)
    img, gt = scene()
    x, g = torch.stack([img, img.flip(-1)]), torch.stack([gt, gt.flip(-1)])  # batch 2 for BatchNorm
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(steps):
        losses = model(x, dict(gt_seg_map=list(g)), mode='loss')
        opt.zero_grad()
        sum(v for k, v in losses.items() if 'loss' in k).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(img[None], meta([(64, 64)], [(64, 64)]), mode='predict')[0]['pred_sem_seg']
    assert (pred == gt).float().mean() > 0.9


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="type one of .*'SegFormerHead'"):
        build(dict(type='SegFormerHead', num_classes=3))
    with pytest.raises(ValueError, match='num_classes'):
        build(auxiliary_head=dict(type='FCNHead', num_classes=4))
    with pytest.raises(ValueError, match='crop_size and stride'):
        build(test_cfg=dict(mode='slide'))
    with pytest.raises(ValueError, match='multiples'):
        build(test_cfg=dict(mode='slide', crop_size=(48, 48), stride=16))
    with pytest.raises(ValueError, match='aug'):
        build(test_cfg=dict(aug=dict(scales=(0.0,))))
    with pytest.raises(ValueError, match="query_mode='learned'"):
        build(MASK, backbone=dict(type='ResNet', depth=50))
    model = build()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(KeyError, match='gt_seg_map'):
        model(x, dict(), mode='loss')
    with pytest.raises(ValueError, match=r'a\.png has shape \(32, 64\).*\(64, 64\)'):
        model(x, dict(img_path=['a.png'], gt_seg_map=[torch.zeros(32, 64, dtype=torch.long)]), mode='loss')
    bad = torch.zeros(64, 64, dtype=torch.long)
    bad[0, 0] = 7
    with pytest.raises(ValueError, match=r'b\.png has labels \[7\] outside 0\.\.2'):
        model(x, dict(img_path=['b.png'], gt_seg_map=[bad]), mode='loss')
    with pytest.raises(KeyError, match='img_shape'):
        model(x, dict(ori_shape=[(64, 64)]), mode='predict')
    with pytest.raises(ValueError, match="mode must be"):
        model(x, mode='logits')
