"""TVMaskRCNN: torchvision's Mask R-CNN on a tiny SpatialFormer + FPN, fed hand-built batches in
sf3d's 2D data contract (normalised padded inputs, data_samples as a dict of lists)."""
import pytest
import torch
from torchvision.ops import box_iou

from sf3d.models.backbones.spatialformer import SpatialFormer
from sf3d.models.detectors.mask_rcnn import StrideAnchorGenerator, TVMaskRCNN, detections_to_original
from sf3d.registry import MODELS

TINY = dict(type='SpatialFormer', arch=dict(dims=(16, 32, 64, 64), heads=(1, 2, 4, 4), depths=(1, 1, 1, 1)),
            spatial_grid=(4, 4), drop_path_rate=0.0)
LOSS_KEYS = {'loss_objectness', 'loss_rpn_box_reg', 'loss_classifier', 'loss_box_reg', 'loss_mask'}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(seed=0, backbone=None, **kwargs):
    torch.manual_seed(seed)
    cfg = dict(backbone=backbone or dict(TINY), num_classes=3, neck=dict(out_channels=32),
               rpn=dict(post_nms_top_n_train=200, pre_nms_top_n_test=200, post_nms_top_n_test=100),
               roi=dict(representation_size=64, mask_layers=(32, 32), batch_size_per_image=64))
    cfg.update(kwargs)
    return TVMaskRCNN(**cfg)


def ellipse(h, w, cx, cy, rx, ry):
    """uint8 (h, w) mask of the pixels whose centres lie in the ellipse."""
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing='ij')
    return ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1).to(torch.uint8)


def two_image_batch():
    """Padded (2, 3, 64, 96) batch: image 0 fills it, image 1 (48 x 80) is padded; image 1 has no GT."""
    torch.manual_seed(1)
    inputs = torch.randn(2, 3, 64, 96)
    inputs[1, :, 48:] = 0
    inputs[1, :, :, 80:] = 0
    samples = dict(
        img_path=['a.jpg', 'b.jpg'], img_id=[11, 12], img_shape=[(64, 96), (48, 80)],
        ori_shape=[(128, 192), (60, 100)], scale_factor=[(0.5, 0.5), (0.8, 0.8)], flip=[False, False],
        gt_bboxes=[torch.tensor([[8., 10., 50., 40.], [60., 20., 90., 60.]]), torch.zeros(0, 4)],
        gt_labels=[torch.tensor([0, 2]), torch.zeros(0, dtype=torch.int64)],
        gt_masks=[torch.stack([ellipse(64, 96, 29, 25, 21, 15), ellipse(64, 96, 75, 40, 15, 20)]),
                  torch.zeros(0, 48, 80, dtype=torch.uint8)])
    return inputs, samples


def test_loss_returns_five_finite_losses_and_every_trainable_parameter_gets_a_gradient():
    model = build().train()
    inputs, samples = two_image_batch()
    losses = model(inputs, samples, mode='loss')
    assert set(losses) == LOSS_KEYS
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.stages[0].downsample.weight.grad.abs().sum() > 0
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # DDP-safe without find_unused_parameters
    assert not any(p.requires_grad for p in model.backbone.spatial_norm.parameters())  # unused spatial tokens
    # RoIAlign scales come from the declared strides, not torchvision's guess from the first batch
    assert model.roi_heads.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert model.roi_heads.mask_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def test_overfits_one_image_and_predicts_the_box_and_mask_at_the_original_scale():
    model = build().train()
    h, w = 64, 96  # img_shape; the file was 96 x 120: scale_factor (w / W0, h / H0) = (0.8, 2 / 3)
    mask = ellipse(h, w, 48, 32, 24, 16)
    inputs = torch.full((1, 3, h, w), -1.0)
    inputs[0, :, mask.bool()] = torch.tensor([1.5, 0.2, -0.5])[:, None]
    samples = dict(img_shape=[(h, w)], ori_shape=[(96, 120)], scale_factor=[(0.8, 64 / 96)], img_id=[7],
                   gt_bboxes=[torch.tensor([[24., 16., 72., 48.]])], gt_labels=[torch.tensor([2])],
                   gt_masks=[mask[None]])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(35):
        loss = sum(model(inputs, samples, mode='loss').values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.2 * history[0]

    with torch.no_grad():
        pred = model.eval()(inputs, samples, mode='predict')[0]
    assert pred['img_id'] == 7 and pred['labels'][0] == 2 and pred['scores'][0] > 0.5
    # hand computation: x / 0.8, y / (2 / 3) -> [30, 24, 90, 72] in the 120 x 96 file
    assert box_iou(pred['bboxes'][:1], torch.tensor([[30., 24., 90., 72.]]))[0, 0] > 0.6
    gt_mask = ellipse(96, 120, 60, 48, 30, 24).bool()
    pm = pred['masks'][0]
    assert pm.shape == (96, 120)
    assert (pm & gt_mask).sum() / (pm | gt_mask).sum() > 0.6


def test_predict_output_follows_the_contract_with_padding():
    model = build(roi=dict(representation_size=64, mask_layers=(32, 32), detections_per_img=5)).eval()
    inputs, samples = two_image_batch()
    with torch.no_grad():
        preds = model(inputs, samples, mode='predict')
        raw = model(inputs, samples, mode='tensor')
    assert len(preds) == 2
    for pred, img_id, (H0, W0) in zip(preds, [11, 12], samples['ori_shape']):
        assert set(pred) == {'img_id', 'bboxes', 'scores', 'labels', 'masks'} and pred['img_id'] == img_id
        N = pred['scores'].shape[0]
        assert 0 < N <= 5  # an untrained head scores every class ~1/4 > 0.05
        assert pred['bboxes'].shape == (N, 4) and pred['bboxes'].dtype == torch.float32
        assert pred['scores'].dtype == torch.float32 and bool((pred['scores'] > 0.05).all())
        assert pred['labels'].dtype == torch.int64 and bool(((pred['labels'] >= 0) & (pred['labels'] < 3)).all())
        assert pred['masks'].shape == (N, H0, W0) and pred['masks'].dtype == torch.bool
        b = pred['bboxes']
        assert bool((b[:, 0] >= 0).all() and (b[:, 2] <= W0).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= H0).all())
    # at img_shape pixels, image 1's detections stay out of the padding (48 x 80 inside 64 x 96)
    det = raw['detections'][1]['boxes']
    assert bool((det[:, 2] <= 80).all() and (det[:, 3] <= 48).all())
    assert list(raw['features']) == ['0', '1', '2', '3', 'pool']
    assert [tuple(f.shape[-2:]) for f in raw['features'].values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    # 'predict' uses the test settings whatever the mode, and leaves the heads' mode as it was
    model.train()
    with torch.no_grad():
        again = model(inputs, samples, mode='predict')
    assert model.rpn.training and model.roi_heads.training
    torch.testing.assert_close(again[0]['bboxes'], preds[0]['bboxes'])


def test_detections_to_original_against_a_hand_computation():
    boxes = torch.tensor([[8., 6., 40., 30.], [0., 0., 70., 50.]])  # at img_shape pixels
    masks = torch.zeros(2, 1, 28, 28)
    masks[:, :, :, :14] = 1.0  # left half of each box
    out = detections_to_original(boxes, torch.tensor([0.9, 0.3]), torch.tensor([1, 3]), masks,
                                 ori_shape=(80, 64), scale_factor=(0.8, 0.5))
    # x / 0.8, y / 0.5; the second box is clipped to (W0, H0) = (64, 80)
    torch.testing.assert_close(out['bboxes'], torch.tensor([[10., 12., 50., 60.], [0., 0., 64., 80.]]))
    assert out['labels'].tolist() == [0, 2] and out['masks'].shape == (2, 80, 64)
    m = out['masks'][0]
    assert m[14:58, 12:28].all() and not m[14:58, 32:48].any()  # left half of x 10..50, not the right
    assert not m[:10].any() and not m[62:].any() and not m[:, :8].any() and not m[:, 52:].any()
    flipped = detections_to_original(boxes[:1], torch.tensor([0.9]), torch.tensor([1]), masks[:1],
                                     ori_shape=(80, 64), scale_factor=(0.8, 0.5), flip=True)
    torch.testing.assert_close(flipped['bboxes'], torch.tensor([[14., 12., 54., 60.]]))  # W0 - x
    fm = flipped['masks'][0]
    assert fm[14:58, 38:52].all() and not fm[14:58, 16:32].any()  # the ones are now on the right


def test_anchor_strides_come_from_the_fpn_not_from_the_padded_size():
    gen = StrideAnchorGenerator([(32,), (128,)], [(1.0,), (1.0,)], strides=[4, 64])
    feats = [torch.zeros(1, 8, 24, 24), torch.zeros(1, 8, 2, 2)]  # a 96 x 96 batch: P6 is ceil(3 / 2) = 2
    from torchvision.models.detection.image_list import ImageList
    anchors = gen(ImageList(torch.zeros(2, 3, 96, 96), [(96, 96), (80, 90)]), feats)
    assert len(anchors) == 2 and anchors[0].shape == (24 * 24 + 4, 4)
    p6 = anchors[0][-4:]  # centres at (x * 64, y * 64); torchvision would use 96 // 2 = 48
    torch.testing.assert_close(p6, torch.tensor([[-64., -64., 64., 64.], [0., -64., 128., 64.],
                                                 [-64., 0., 64., 128.], [0., 0., 128., 128.]]))
    torch.testing.assert_close(anchors[0][:2], torch.tensor([[-16., -16., 16., 16.], [-12., -16., 20., 16.]]))


def test_images_without_objects_train_without_nan():
    model = build().train()
    inputs, samples = two_image_batch()
    empty = {k: v[1:] for k, v in samples.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for batch in ((inputs[1:], empty), (inputs, samples), (inputs[1:], empty)):
        losses = model(*batch, mode='loss')
        assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_faster_rcnn_variant_needs_no_masks():
    model = build(with_mask=False)
    inputs, samples = two_image_batch()
    del samples['gt_masks']
    assert set(model.train()(inputs, samples, mode='loss')) == LOSS_KEYS - {'loss_mask'}
    with torch.no_grad():
        pred = model.eval()(inputs, samples, mode='predict')[0]
    assert 'masks' not in pred and pred['bboxes'].shape[1] == 4


def test_bad_inputs_raise_clear_errors():
    model = build()
    inputs, samples = two_image_batch()

    def fails(match, **changes):
        bad = dict(samples, **changes)
        with pytest.raises(ValueError, match=match):
            model(inputs, {k: v for k, v in bad.items() if v is not None}, mode='loss')

    fails("'gt_masks'", gt_masks=None)
    fails("'img_shape'", img_shape=None)
    fails(r"gt_labels must lie in 0..2, got \[3\]", gt_labels=[torch.tensor([0, 3]), samples['gt_labels'][1]])
    fails(r'a.jpg: gt_bboxes need x2 > x1', gt_bboxes=[torch.tensor([[8., 10., 8., 40.], [60., 20., 90., 60.]]),
                                                         samples['gt_bboxes'][1]])
    fails(r'gt_masks must be \(K=2', gt_masks=[samples['gt_masks'][0][:1], samples['gt_masks'][1]])
    fails(r'does not fit the padded inputs \(64, 96\)', img_shape=[(64, 128), (48, 80)])
    fails('2 entries for a batch of 2|1 entries for a batch of 2', gt_labels=samples['gt_labels'][:1])
    with pytest.raises(ValueError, match="'ori_shape'"):
        model(inputs, {k: v for k, v in samples.items() if k != 'ori_shape'}, mode='predict')
    with pytest.raises(ValueError, match="mode must be"):
        model(inputs, samples, mode='losses')
    with pytest.raises(ValueError, match=r"unknown roi keys \['detections'\]"):
        build(roi=dict(detections=100))


def test_pretrained_backbone_loads_through_init_cfg(tmp_path):
    torch.manual_seed(5)
    source = SpatialFormer(**{k: v for k, v in TINY.items() if k != 'type'})
    path = tmp_path / 'sf_tiny_imagenet.pth'
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in source.state_dict().items()}
                    | {'head.fc.weight': torch.zeros(10, 64)}, meta={}), path)
    cfg = dict(type='TVMaskRCNN', backbone=dict(TINY, init_cfg=dict(type='Pretrained', checkpoint=str(path))),
               num_classes=3, neck=dict(out_channels=32), roi=dict(representation_size=64, mask_layers=(32,)))
    model = MODELS.build(cfg)
    assert not torch.equal(model.backbone.spatial_embed, source.spatial_embed)
    model.init_weights()
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v, rtol=0, atol=0)
    cfg['backbone']['init_cfg']['checkpoint'] = str(tmp_path / 'missing_sf.pth')
    with pytest.raises(FileNotFoundError, match='missing_sf.pth'):
        MODELS.build(cfg).init_weights()
