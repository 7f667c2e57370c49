# The mask-transformer head on the tiny synthetic ADE set, queries from the spatial tokens: the
# 4 x 4 tokens replicated to 64 candidates, the top 25 selected (the paper's 64 -> 256 -> 100 in
# proportion), 3 decoder layers, 32 channels (configs/ade20k/maskformer_sf_s_160k.py shrunk).
# Data and schedule as ade_tiny_upernet.py.
_base_ = ['./ade_tiny_upernet.py']

model = dict(
    decode_head=dict(_delete_=True, type='MaskTransformerHead', num_classes={{_base_.num_classes}},
                     query_mode='spatial_tokens', num_candidates=64, num_queries=25, embed_dims=32, mask_dims=32,
                     num_heads=2, ffn_dims=64, num_layers=3, num_points=1024),
    auxiliary_head=None,
)
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=1.0))
