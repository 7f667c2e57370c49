# Ablation: the demo detector started from a dense pretraining on the same camera images
# (DETR3D's FCOS3D step in small, sf3d/models/detectors/dense_pretrainer.py). Make the checkpoint first:
#   python tools/train.py configs/synthetic/nuscenes_tiny_dense.py --work-dir work_dirs/tiny_dense
#   mkdir -p checkpoints && cp work_dirs/tiny_dense/epoch_4.pth checkpoints/nuscenes_tiny_dense.pth
_base_ = ['../nuscenes_tiny.py']
model = dict(pretrained='checkpoints/nuscenes_tiny_dense.pth')
