# Rig-varied training (../nuscenes_tiny_rig.py) plus calibration errors: after CameraRigAug has made
# image and calibration agree, ExtrinsicNoise turns each believed camera by N(0, 1 deg) in roll,
# pitch and yaw (one draw per camera and sample), so the tokens learn how far to trust the
# calibration (docs/ablations.md part 4: trained across rigs without it, calibration errors cost more).
_base_ = ['../nuscenes_tiny_rig.py']

calib_noise = dict(type='ExtrinsicNoise', rot_deg=1.0, distribution='normal', seed=0)
train_pipeline = _base_.train_pipeline[:3] + [calib_noise] + _base_.train_pipeline[3:]  # after CameraRigAug
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
