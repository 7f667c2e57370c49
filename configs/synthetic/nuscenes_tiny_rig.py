# The `make demo` detector trained across camera rigs (docs/ablations.md, part 4): the training
# scenes come from a multi-rig synthetic set (each scene rendered through its own rig: camera height
# +-0.3 m, focal x0.95-1.05, pitch +-1 deg, roll +-0.5 deg), and CameraRigAug varies every sample's
# cameras further with the calibration kept exact (zoom x0.9-1.1, principal point +-8 / +-4 px,
# roll / pitch / yaw +-1 / 2 / 1 deg). Validation stays on the base rig (data/nuscenes_synthetic).
# Make the training set once:
#   python tools/make_synthetic_nuscenes.py --out data/nuscenes_synthetic_multirig --samples-per-scene 20 \
#       --rig-ranges focal=0.95:1.05,height=-0.3:0.3,pitch=-1:1,roll=-0.5:0.5
#   python tools/create_data.py nuscenes --root-path data/nuscenes_synthetic_multirig --version v1.0-mini
_base_ = ['./nuscenes_tiny.py']

rig_data_root = 'data/nuscenes_synthetic_multirig/'
camera_rig_aug = dict(type='CameraRigAug', zoom=(0.9, 1.1), shift=(8, 4), rot_deg=(1.0, 2.0, 1.0))
# after LoadMultiViewImages and ResizeCropFlipMultiView, on the network-size images
train_pipeline = _base_.train_pipeline[:2] + [camera_rig_aug] + _base_.train_pipeline[2:]
train_dataloader = dict(dataset=dict(data_root=rig_data_root, pipeline=train_pipeline))
