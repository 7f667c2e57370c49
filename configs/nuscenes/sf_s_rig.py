# sf_s.py trained across camera rigs: CameraRigAug gives every camera of every training sample another
# lens, crop and mounting angle, with the calibration updated exactly (sf3d/datasets/transforms/
# camera_aug.py), so that the tokens' camera conditioning varies and the detector cannot rely on one
# rig's depth cues. Ranges sized to what fleets vary, at the 1600x900 input:
#   zoom x0.9-1.1: nuScenes' own cameras differ by 1 % (fx 1257-1273 px, CAM_BACK aside); another car's
#     or dataset's lens at the same image size by about 10 %;
#   principal point +-32 px: nuScenes' cx 792-829, cy 480-501 px;
#   roll / pitch / yaw +-1 / 2 / 1 deg: mounting tolerance and the body's pitch under braking.
# A different mounting height cannot be rendered from an image (parallax); on synthetic data the
# multi-rig sets cover it (configs/synthetic/nuscenes_tiny_rig.py, docs/ablations.md part 4).
_base_ = ['./sf_s.py']

camera_rig_aug = dict(type='CameraRigAug', zoom=(0.9, 1.1), shift=(32, 32), rot_deg=(1.0, 2.0, 1.0))
train_pipeline = _base_.train_pipeline[:1] + [camera_rig_aug] + _base_.train_pipeline[1:]  # after loading
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
